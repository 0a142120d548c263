using System.ComponentModel.DataAnnotations;
using Azure.Storage.Blobs;
using Microsoft.Extensions.Options;

namespace EraserWorker.Storage;

/// <summary>Which <see cref="IBlobStore"/> backs the adapter store.</summary>
public enum StorageKind
{
    /// <summary>A local folder (<see cref="FileSystemBlobStore"/>), the embedded default.</summary>
    FileSystem = 0,

    /// <summary>Azure Blob Storage or Azurite (<see cref="AzureBlobStore"/>).</summary>
    AzureBlob = 1,
}

/// <summary>
/// Configuration section <c>Eraser:Storage</c> (environment: <c>Eraser__Storage__Kind</c>, …). Validated at
/// start-up: data annotations plus <see cref="StorageOptionsValidator"/> for the rules across keys.
/// </summary>
public sealed class StorageOptions
{
    /// <summary>The configuration section.</summary>
    public const string SectionName = "Eraser:Storage";

    /// <summary><c>Eraser:Storage:Kind</c>: <c>FileSystem</c> (default) or <c>AzureBlob</c>.</summary>
    public StorageKind Kind { get; set; } = StorageKind.FileSystem;

    /// <summary><c>Eraser:Storage:Root</c>: folder of the FileSystem store (default <c>./data</c>, relative to
    /// the working directory).</summary>
    public string Root { get; set; } = "./data";

    /// <summary><c>Eraser:Storage:ConnectionString</c>: AzureBlob by connection string (Azurite:
    /// <c>UseDevelopmentStorage=true</c> or the full development string). Exclusive with <see cref="ServiceUri"/>.</summary>
    public string? ConnectionString { get; set; }

    /// <summary><c>Eraser:Storage:ServiceUri</c>: AzureBlob by service URL
    /// (<c>https://&lt;account&gt;.blob.core.windows.net</c>) with <c>DefaultAzureCredential</c>.</summary>
    public string? ServiceUri { get; set; }

    /// <summary><c>Eraser:Storage:Container</c>: blob container (default <c>eraser</c>), created if missing unless
    /// <see cref="CreateContainer"/> is false.</summary>
    [Required]
    [RegularExpression("^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$",
        ErrorMessage = "Eraser:Storage:Container must be 3–63 characters of lowercase letters, digits and single hyphens, starting and ending with a letter or digit.")]
    public string Container { get; set; } = "eraser";

    /// <summary><c>Eraser:Storage:CreateContainer</c>: AzureBlob only — create <see cref="Container"/> when it is missing
    /// (default true, for development and Azurite). Set it to false in production and create the container when
    /// provisioning: the worker then needs no account-level permission, only read, create, write, delete and list on
    /// blobs of that one container (a container-scoped SAS, or <c>Storage Blob Data Contributor</c> on the container).
    /// A missing container is then reported (readiness false, operations fail), never created.</summary>
    public bool CreateContainer { get; set; } = true;

    /// <summary><c>Eraser:Storage:AllowInsecureHttp</c>: AzureBlob only — allow plain HTTP to a blob endpoint on another
    /// machine (default false; loopback and Azurite's published development key are always allowed).</summary>
    public bool AllowInsecureHttp { get; set; }

    /// <summary><c>Eraser:Storage:WriterId</c>: identity of this process in version claims (see
    /// <see cref="AdapterStore.PublishVersionAsync"/>). Default: unique per process. A stable id per replica
    /// (e.g. a StatefulSet pod name) lets a restarted replica finish its own interrupted writes at once.</summary>
    [StringLength(200, MinimumLength = 1)]
    public string? WriterId { get; set; }

    /// <summary><c>Eraser:Storage:VersionClaimTimeout</c>: after how long another writer may take over a
    /// version (or registration) left unfinished by a writer that crashed (default 10 minutes).</summary>
    [Range(typeof(TimeSpan), "00:00:01", "1.00:00:00", ParseLimitsInInvariantCulture = true, ConvertValueInInvariantCulture = true)]
    public TimeSpan VersionClaimTimeout { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary><c>Eraser:Storage:LockTimeout</c>: FileSystem only — longest wait for a blob's lock file
    /// (default 30 seconds).</summary>
    [Range(typeof(TimeSpan), "00:00:01", "00:10:00", ParseLimitsInInvariantCulture = true, ConvertValueInInvariantCulture = true)]
    public TimeSpan LockTimeout { get; set; } = TimeSpan.FromSeconds(30);
}

/// <summary>Rules of <see cref="StorageOptions"/> across keys.</summary>
public sealed class StorageOptionsValidator : IValidateOptions<StorageOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, StorageOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();
        switch (options.Kind)
        {
            case StorageKind.FileSystem:
                if (string.IsNullOrWhiteSpace(options.Root))
                {
                    failures.Add("Eraser:Storage:Root must be set when Eraser:Storage:Kind is FileSystem.");
                }
                else
                {
                    try
                    {
                        _ = Path.GetFullPath(options.Root);
                    }
                    catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
                    {
                        failures.Add($"Eraser:Storage:Root '{options.Root}' is not a valid path: {e.Message}");
                    }
                }
                break;
            case StorageKind.AzureBlob:
                bool hasConnection = !string.IsNullOrWhiteSpace(options.ConnectionString);
                bool hasUri = !string.IsNullOrWhiteSpace(options.ServiceUri);
                if (hasConnection == hasUri)
                    failures.Add("Eraser:Storage:Kind AzureBlob needs exactly one of Eraser:Storage:ConnectionString and Eraser:Storage:ServiceUri.");
                if (hasUri && !(Uri.TryCreate(options.ServiceUri, UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttps || uri.Scheme == Uri.UriSchemeHttp)))
                    failures.Add($"Eraser:Storage:ServiceUri '{options.ServiceUri}' must be an absolute http(s) URL such as https://<account>.blob.core.windows.net.");
                if (hasConnection && !hasUri)
                {
                    try
                    {
                        _ = new BlobServiceClient(options.ConnectionString);
                    }
                    catch (Exception e) when (e is FormatException or ArgumentException or InvalidOperationException)
                    {
                        failures.Add("Eraser:Storage:ConnectionString is not a valid storage connection string.");
                    }
                }
                break;
            default:
                failures.Add($"Eraser:Storage:Kind '{options.Kind}' is unknown (FileSystem | AzureBlob).");
                break;
        }
        if (options.WriterId is not null && !options.WriterId.All(c => c is >= ' ' and <= '~'))
            failures.Add("Eraser:Storage:WriterId must be printable ASCII.");
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
