using System.Net;
using Microsoft.Extensions.Options;

namespace EraserWorker.Storage.Security;

/// <summary>
/// Transport security of the blob endpoint, checked wherever storage is configured (the worker and the CLI alike): a
/// plain-HTTP endpoint is refused unless it is this machine (loopback: Azurite next to the worker), or the only credential
/// is Azurite's published development key (nothing secret to protect: the compose stack), or
/// <c>Eraser:Storage:AllowInsecureHttp</c> is true. No message produced here contains a password, key, SAS or connection
/// string: only schemes, hosts and ports.
/// </summary>
public static class BlobEndpointSecurity
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

/// <summary>Refuses a plain-HTTP blob endpoint on another machine (see <see cref="BlobEndpointSecurity"/>).</summary>
internal sealed class StorageTlsValidator : IValidateOptions<StorageOptions>
{
    public ValidateOptionsResult Validate(string? name, StorageOptions options)
    {
        if (options.Kind != StorageKind.AzureBlob || options.AllowInsecureHttp)
            return ValidateOptionsResult.Success;
        if (BlobEndpointSecurity.BlobEndpoint(options) is not { } endpoint || endpoint.Endpoint.Scheme != Uri.UriSchemeHttp
            || BlobEndpointSecurity.IsLoopback(endpoint.Endpoint.Host) || endpoint.PublicDevelopmentKey)
            return ValidateOptionsResult.Success;
        string key = string.IsNullOrWhiteSpace(options.ServiceUri) ? "Eraser:Storage:ConnectionString" : "Eraser:Storage:ServiceUri";
        return ValidateOptionsResult.Fail(
            $"{key} uses plain HTTP to {endpoint.Endpoint.Authority}, another machine: the account key, SAS or token would travel unencrypted. " +
            $"Use https, or set {BlobEndpointSecurity.AllowInsecureHttpKey}=true for a trusted test network.");
    }
}
