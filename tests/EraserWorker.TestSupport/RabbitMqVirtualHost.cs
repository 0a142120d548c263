using System.Net;
using System.Net.Http.Headers;
using System.Text;
using RabbitMQ.Client;

namespace EraserWorker.Tests.Infrastructure;

/// <summary>
/// A fresh RabbitMQ virtual host on the broker of <see cref="TestServices.RabbitMqVariable"/>, created through the
/// management HTTP API (<c>PUT /api/vhosts/&lt;name&gt;</c>, full permissions for the URI's user) and deleted on
/// dispose, so that every test has its own exchanges and queues. The management API is
/// <see cref="ManagementVariable"/> when set, else <c>http://&lt;amqp host&gt;:15672/</c>.
/// </summary>
public sealed class RabbitMqVirtualHost : IAsyncDisposable
{
    /// <summary>Base URL of the management API, e.g. <c>http://127.0.0.1:15672/</c> (set by scripts/test.sh).</summary>
    public const string ManagementVariable = "ERASER_TEST_RABBITMQ_MANAGEMENT";

    private readonly HttpClient _management;

    private RabbitMqVirtualHost(Uri amqp, HttpClient management, string name, string username, string password)
    {
        _management = management;
        Name = name;
        Host = amqp.Host;
        Port = amqp.IsDefaultPort || amqp.Port <= 0 ? 5672 : amqp.Port;
        Username = username;
        Password = password;
    }

    /// <summary>The virtual host's name (URL-safe: letters, digits and dashes).</summary>
    public string Name { get; }

    /// <summary>Broker host name.</summary>
    public string Host { get; }

    /// <summary>AMQP port.</summary>
    public int Port { get; }

    /// <summary>User name (from the AMQP URI; guest by default).</summary>
    public string Username { get; }

    /// <summary>Password (from the AMQP URI; guest by default).</summary>
    public string Password { get; }

    /// <summary>AMQP URI of the virtual host (its name as the path).</summary>
    public string AmqpUri =>
        $"amqp://{Uri.EscapeDataString(Username)}:{Uri.EscapeDataString(Password)}@{Host}:{Port}/{Uri.EscapeDataString(Name)}";

    /// <summary>Creates the virtual host and grants the URI's user every permission on it; fails (or skips) when
    /// RabbitMQ is not configured, and fails with the management API's answer when it refuses.</summary>
    public static async Task<RabbitMqVirtualHost> CreateAsync(string prefix = "eraser-test", CancellationToken cancellationToken = default)
    {
        var amqp = new Uri(TestServices.RequireRabbitMq());
        string management = Environment.GetEnvironmentVariable(ManagementVariable) is { Length: > 0 } configured
            ? configured
            : $"http://{amqp.Host}:15672/";
        var user = amqp.UserInfo.Split(':', 2);
        string username = user[0].Length > 0 ? Uri.UnescapeDataString(user[0]) : "guest";
        string password = user.Length > 1 ? Uri.UnescapeDataString(user[1]) : "guest";
        var client = new HttpClient { BaseAddress = new Uri(management.EndsWith('/') ? management : management + "/"), Timeout = TimeSpan.FromSeconds(30) };
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{username}:{password}")));
        var vhost = new RabbitMqVirtualHost(amqp, client, $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)], username, password);
        try
        {
            await vhost.SendAsync(HttpMethod.Put, $"api/vhosts/{Uri.EscapeDataString(vhost.Name)}", "{}", cancellationToken);
            await vhost.SendAsync(HttpMethod.Put, $"api/permissions/{Uri.EscapeDataString(vhost.Name)}/{Uri.EscapeDataString(vhost.Username)}",
                """{"configure":".*","write":".*","read":".*"}""", cancellationToken);
        }
        catch (HttpRequestException e)
        {
            client.Dispose();
            throw new InvalidOperationException(
                $"The RabbitMQ management API at {client.BaseAddress} is not reachable ({e.Message}); scripts/services.sh enables the " +
                $"rabbitmq_management plugin. Set {ManagementVariable} if it listens elsewhere.", e);
        }
        return vhost;
    }

    /// <summary>A connection factory for this virtual host.</summary>
    public ConnectionFactory CreateConnectionFactory(string clientName = "eraser-tests") => new()
    {
        HostName = Host,
        Port = Port,
        UserName = Username,
        Password = Password,
        VirtualHost = Name,
        ClientProvidedName = clientName,
        AutomaticRecoveryEnabled = false,
    };

    /// <summary>Opens a connection to this virtual host.</summary>
    public Task<IConnection> ConnectAsync(string clientName = "eraser-tests", CancellationToken cancellationToken = default) =>
        CreateConnectionFactory(clientName).CreateConnectionAsync(cancellationToken);

    /// <summary>Messages ready in a queue of this virtual host (AMQP passive declare: exact, not the management API's
    /// sampled statistics); null when the queue does not exist.</summary>
    public async Task<uint?> MessageCountAsync(string queue, CancellationToken cancellationToken = default)
    {
        await using var connection = await ConnectAsync("eraser-tests-count", cancellationToken);
        await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        try
        {
            var ok = await channel.QueueDeclarePassiveAsync(queue, cancellationToken);
            return ok.MessageCount;
        }
        catch (RabbitMQ.Client.Exceptions.OperationInterruptedException e) when (e.ShutdownReason?.ReplyCode == 404)
        {
            return null;
        }
    }

    private async Task SendAsync(HttpMethod method, string path, string? json, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, path);
        if (json is not null)
            request.Content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await _management.SendAsync(request, cancellationToken);
        if (!response.IsSuccessStatusCode && !(method == HttpMethod.Delete && response.StatusCode == HttpStatusCode.NotFound))
            throw new InvalidOperationException(
                $"RabbitMQ management API: {method} {path} answered {(int)response.StatusCode} {response.ReasonPhrase}: {await response.Content.ReadAsStringAsync(cancellationToken)}");
    }

    /// <summary>Deletes the virtual host (with its exchanges, queues and connections).</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            await SendAsync(HttpMethod.Delete, $"api/vhosts/{Uri.EscapeDataString(Name)}", null, CancellationToken.None);
        }
        catch (Exception e) when (e is HttpRequestException or InvalidOperationException or TaskCanceledException)
        {
            // Best effort: a leftover virtual host is harmless (unique name).
        }
        finally
        {
            _management.Dispose();
        }
    }
}
