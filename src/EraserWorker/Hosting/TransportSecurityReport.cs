using EraserWorker.Storage;
using EraserWorker.Storage.Security;
using Microsoft.Extensions.Options;

namespace EraserWorker.Hosting;

/// <summary>Logs, once at start-up, how the worker reaches the broker and the store (schemes and hosts only) and warns
/// about plaintext connections to other machines.</summary>
internal sealed class TransportSecurityReport(IOptions<TransportOptions> transport, IOptions<StorageOptions> storage,
    ILogger<TransportSecurityReport> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var t = transport.Value;
        if (t.Kind == TransportKind.RabbitMq)
        {
            logger.LogInformation("Broker: {Scheme}://{Host}:{Port}, virtual host {VirtualHost}",
                t.UseTls ? "amqps" : "amqp", t.Host, t.Port, t.VirtualHost);
            if (!t.UseTls && !BlobEndpointSecurity.IsLoopback(t.Host))
                logger.LogWarning("The connection to RabbitMQ at {Host} is not encrypted: credentials and requests travel in clear. " +
                                  "Set Eraser:Transport:UseTls=true (and Port, usually 5671) unless the network is trusted.", t.Host);
            if (t.UseTls && t.Port == 5672)
                logger.LogWarning("Eraser:Transport:UseTls is true but Port is 5672, RabbitMQ's plaintext port; amqps usually listens on 5671.");
        }
        var s = storage.Value;
        if (s.Kind == StorageKind.AzureBlob && BlobEndpointSecurity.BlobEndpoint(s) is { } blob)
            logger.LogInformation("Blob store: {Endpoint} ({Credential}), container {Container}", blob.Endpoint.GetLeftPart(UriPartial.Authority),
                !string.IsNullOrWhiteSpace(s.ServiceUri) ? "DefaultAzureCredential" : "connection string", s.Container);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
