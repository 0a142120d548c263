using System.ComponentModel.DataAnnotations;

namespace EraserWorker.Hosting;

/// <summary><c>Eraser:Transport</c> (SPEC §5).</summary>
public sealed class TransportOptions
{
    public const string SectionName = "Eraser:Transport";

    public TransportKind Kind { get; set; } = TransportKind.InMemory;
    public string Host { get; set; } = "localhost";
    [Range(1, 65535)] public int Port { get; set; } = 5672;
    public string VirtualHost { get; set; } = "/";
    public string Username { get; set; } = "guest";
    public string Password { get; set; } = "guest";
    /// <summary>TLS to the broker (amqps); the server name is <see cref="Host"/>.</summary>
    public bool UseTls { get; set; }
}

public enum TransportKind { InMemory, RabbitMq }

/// <summary><c>Eraser:Http</c>: the port of <c>/metrics</c>, <c>/health/live</c> and <c>/health/ready</c>.</summary>
public sealed class HttpOptions
{
    public const string SectionName = "Eraser:Http";

    [Range(0, 65535)] public int Port { get; set; } = 8080;
}
