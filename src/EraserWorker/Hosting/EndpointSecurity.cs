using System.Net;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;

namespace EraserWorker.Hosting;

/// <summary>
/// Transport security of the two remote endpoints, checked at start-up.
/// <list type="bullet">
/// <item>Blob storage (<see cref="StorageTlsValidator"/>): a plain-HTTP endpoint is refused unless it is this machine
/// (loopback: Azurite next to the worker), or the only credential is Azurite's published development key (nothing
/// secret to protect: the compose stack), or <c>Eraser:Storage:AllowInsecureHttp</c> is true.</item>
/// <item>RabbitMQ: <c>Eraser:Transport:UseTls</c> selects amqps; a plaintext connection to another machine is logged as
/// a warning at start-up (<see cref="TransportSecurityReport"/>), not refused, because in-cluster brokers without TLS are
/// common (the shipped compose and Kubernetes files use one).</item>
/// </list>
/// No message produced here contains a password, key, SAS or connection string: only schemes, hosts and ports.
/// </summary>
public static class EndpointSecurity
{
    /// <summary>Configuration key that allows plain HTTP to a remote blob endpoint (default false).</summary>
    public const string AllowInsecureHttpKey = "Eraser:Storage:AllowInsecureHttp";

    /// <summary>Azurite's well-known development account key (published by Microsoft; not a secret).</summary>
    internal const string AzuriteDevelopmentKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// <summary>The blob endpoint the options point at: scheme, host and port (no credentials), and whether its only
    /// credential is Azurite's published development key. Null when it cannot be determined.</summary>
    public static (Uri Endpoint, bool PublicDevelopmentKey)? BlobEndpoint(StorageOptions options)
    {
        if (!string.IsNullOrWhiteSpace(options.ServiceUri))
            return Uri.TryCreate(options.ServiceUri, UriKind.Absolute, out var uri) ? (Strip(uri), false) : null;
        if (string.IsNullOrWhiteSpace(options.ConnectionString))
            return null;
        var parts = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var part in options.ConnectionString.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.IndexOf('=');
            if (eq > 0)
                parts[part[..eq].Trim()] = part[(eq + 1)..].Trim();
        }
        if (parts.TryGetValue("UseDevelopmentStorage", out var dev) && dev.Equals("true", StringComparison.OrdinalIgnoreCase))
        {
            var proxy = parts.TryGetValue("DevelopmentStorageProxyUri", out var p) && Uri.TryCreate(p, UriKind.Absolute, out var pu) ? pu : null;
            return (proxy is null ? new Uri("http://127.0.0.1:10000/") : Strip(proxy), true);
        }
        bool publicKey = parts.TryGetValue("AccountKey", out var key) && key == AzuriteDevelopmentKey && !parts.ContainsKey("SharedAccessSignature");
        if (parts.TryGetValue("BlobEndpoint", out var blob))
            return Uri.TryCreate(blob, UriKind.Absolute, out var bu) ? (Strip(bu), publicKey) : null;
        string scheme = parts.TryGetValue("DefaultEndpointsProtocol", out var protocol) ? protocol.ToLowerInvariant() : "https";
        string account = parts.TryGetValue("AccountName", out var a) ? a : "account";
        string suffix = parts.TryGetValue("EndpointSuffix", out var s) ? s : "core.windows.net";
        return Uri.TryCreate($"{scheme}://{account}.blob.{suffix}/", UriKind.Absolute, out var built) ? (built, publicKey) : null;
    }

    /// <summary>True for <c>localhost</c> and loopback addresses.</summary>
    public static bool IsLoopback(string host) =>
        host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    private static Uri Strip(Uri uri) => new($"{uri.Scheme}://{uri.Authority}/");
}

/// <summary>Refuses a plain-HTTP blob endpoint on another machine (see <see cref="EndpointSecurity"/>).</summary>
internal sealed class StorageTlsValidator(IConfiguration configuration) : IValidateOptions<StorageOptions>
{
    public ValidateOptionsResult Validate(string? name, StorageOptions options)
    {
        if (options.Kind != StorageKind.AzureBlob || configuration.GetValue<bool>(EndpointSecurity.AllowInsecureHttpKey))
            return ValidateOptionsResult.Success;
        if (EndpointSecurity.BlobEndpoint(options) is not { } endpoint || endpoint.Endpoint.Scheme != Uri.UriSchemeHttp
            || EndpointSecurity.IsLoopback(endpoint.Endpoint.Host) || endpoint.PublicDevelopmentKey)
            return ValidateOptionsResult.Success;
        string key = string.IsNullOrWhiteSpace(options.ServiceUri) ? "Eraser:Storage:ConnectionString" : "Eraser:Storage:ServiceUri";
        return ValidateOptionsResult.Fail(
            $"{key} uses plain HTTP to {endpoint.Endpoint.Authority}, another machine: the account key, SAS or token would travel unencrypted. " +
            $"Use https, or set {EndpointSecurity.AllowInsecureHttpKey}=true for a trusted test network.");
    }
}

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
            if (!t.UseTls && !EndpointSecurity.IsLoopback(t.Host))
                logger.LogWarning("The connection to RabbitMQ at {Host} is not encrypted: credentials and requests travel in clear. " +
                                  "Set Eraser:Transport:UseTls=true (and Port, usually 5671) unless the network is trusted.", t.Host);
            if (t.UseTls && t.Port == 5672)
                logger.LogWarning("Eraser:Transport:UseTls is true but Port is 5672, RabbitMQ's plaintext port; amqps usually listens on 5671.");
        }
        var s = storage.Value;
        if (s.Kind == StorageKind.AzureBlob && EndpointSecurity.BlobEndpoint(s) is { } blob)
            logger.LogInformation("Blob store: {Endpoint} ({Credential}), container {Container}", blob.Endpoint.GetLeftPart(UriPartial.Authority),
                !string.IsNullOrWhiteSpace(s.ServiceUri) ? "DefaultAzureCredential" : "connection string", s.Container);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>
/// The worker's <see cref="IBlobStore"/>: the configured store, except that <see cref="IBlobStore.UriFor"/> drops any
/// query string. With a connection string that holds a SAS, the Azure SDK puts the SAS (<c>sig=…</c>) into every blob
/// URL; those URLs are logged and published as <c>adapterUri</c>, so without this the signature would leak to every
/// subscriber and log reader.
/// </summary>
internal sealed class CredentialFreeUriBlobStore(IBlobStore inner) : IBlobStore
{
    public string UriFor(string name)
    {
        string uri = inner.UriFor(name);
        int query = uri.IndexOf('?', StringComparison.Ordinal);
        if (query < 0)
            return uri;
        string bare = uri[..query];
        return name.EndsWith('/') && !bare.EndsWith('/') ? bare + "/" : bare;
    }

    public Task InitializeAsync(CancellationToken cancellationToken = default) => inner.InitializeAsync(cancellationToken);
    public Task<BlobItem?> GetPropertiesAsync(string name, CancellationToken cancellationToken = default) => inner.GetPropertiesAsync(name, cancellationToken);
    public Task<BlobDownload?> DownloadAsync(string name, Stream destination, CancellationToken cancellationToken = default) => inner.DownloadAsync(name, destination, cancellationToken);
    public Task<string> UploadAsync(string name, Stream content, BlobCondition condition, CancellationToken cancellationToken = default) => inner.UploadAsync(name, content, condition, cancellationToken);
    public IAsyncEnumerable<string> ListAsync(string prefix, CancellationToken cancellationToken = default) => inner.ListAsync(prefix, cancellationToken);
    public Task<bool> DeleteAsync(string name, CancellationToken cancellationToken = default) => inner.DeleteAsync(name, cancellationToken);
    public Task<bool> IsReachableAsync(CancellationToken cancellationToken = default) => inner.IsReachableAsync(cancellationToken);
}
