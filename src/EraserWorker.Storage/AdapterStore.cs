using System.Runtime.CompilerServices;
using EraserWorker.Contracts;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;
using EraserWorker.Storage.Transfers;
using EraserWorker.Storage.Versions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

[assembly: InternalsVisibleTo("EraserWorker.Tests")]
[assembly: InternalsVisibleTo("EraserWorker.Cli.Tests")]

namespace EraserWorker.Storage;

/// <summary>Current version of an adapter, as read from <c>head.json</c>, with the ETag to update it.</summary>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Version">Current version (0 = the registered base).</param>
/// <param name="ETag">ETag of <c>head.json</c>: a version computed on this head may become head only while it is unchanged.</param>
/// <param name="UpdatedAt">When the head was last written.</param>
public sealed record AdapterHead(string AdapterId, int Version, string ETag, DateTimeOffset UpdatedAt);

/// <summary>A complete adapter version.</summary>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Version">The version.</param>
/// <param name="Uri">URI of the version's folder, the <c>adapterUri</c> of the events (never with a SAS).</param>
/// <param name="Sha256">Lowercase hex SHA-256 of its <c>adapter_model.safetensors</c>.</param>
public sealed record AdapterVersionRef(string AdapterId, int Version, string Uri, string Sha256);

/// <summary>
/// The adapter store of SPEC §4 — registered adapters, their immutable versions, heads moved with ETags, gradient caches,
/// replacement sets, request markers — over an <see cref="IBlobStore"/> (a local folder or Azure Blob Storage). This type
/// is the store's whole public surface; each responsibility lives in its own room:
/// <see cref="BlobLayout"/> (blob names), <see cref="HeadStore"/>, <see cref="AdapterRegistration"/>,
/// <see cref="VersionPublisher"/> (with <see cref="VersionWriter"/>, <see cref="VersionClaims"/> and
/// <see cref="RequestMarkers"/>), <see cref="AdapterDownloads"/>, <see cref="ReplacementSetStore"/> and
/// <see cref="VersionPruner"/>. No caller builds a blob name. Thread-safe; several processes and machines may share one store.
/// </summary>
public sealed class AdapterStore
{
    /// <summary>Highest version number (six digits).</summary>
    public const int MaxVersion = BlobLayout.MaxVersion;

    /// <summary>Names of local files (each path segment) that may be uploaded or downloaded.</summary>
    public const string LocalFileNamePattern = BlobLayout.LocalFileNamePattern;

    /// <summary>The file of a registered model that must be present (its Hugging Face configuration).</summary>
    public const string ModelConfigFileName = AdapterRegistration.ModelConfigFileName;

    private readonly StoreContext _context;
    private readonly HeadStore _heads;
    private readonly AdapterRegistration _registration;
    private readonly VersionWriter _writer;
    private readonly VersionPublisher _publisher;
    private readonly RequestMarkers _markers;
    private readonly AdapterDownloads _downloads;
    private readonly ReplacementSetStore _replacements;
    private readonly VersionPruner _pruner;
    private readonly TrainingTexts _training;

    /// <param name="blobs">The blob store (from <see cref="StorageServiceCollectionExtensions.CreateBlobStore"/>, which keeps
    /// credentials out of URIs).</param>
    /// <param name="options">Uses <see cref="StorageOptions.WriterId"/> and <see cref="StorageOptions.VersionClaimTimeout"/>.</param>
    public AdapterStore(IBlobStore blobs, StorageOptions? options = null, ILogger<AdapterStore>? logger = null, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(blobs);
        options ??= new StorageOptions();
        string writerId = string.IsNullOrWhiteSpace(options.WriterId)
            ? $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid():N}"
            : options.WriterId;
        _context = new StoreContext(blobs, writerId.Length <= 200 ? writerId : writerId[^200..], options.VersionClaimTimeout,
            (ILogger?)logger ?? NullLogger.Instance, timeProvider ?? TimeProvider.System);
        _heads = new HeadStore(_context);
        var claims = new VersionClaims(_context);
        _writer = new VersionWriter(_context, claims);
        _markers = new RequestMarkers(_context);
        _training = new TrainingTexts(_context);
        _registration = new AdapterRegistration(_context, _heads, claims, _training);
        _publisher = new VersionPublisher(_context, _heads, _writer, claims, _markers);
        _downloads = new AdapterDownloads(_context);
        _replacements = new ReplacementSetStore(_context);
        _pruner = new VersionPruner(_context, _heads, claims);
    }

    /// <summary>This writer's identity in version claims and manifests.</summary>
    public string WriterId => _context.WriterId;

    /// <summary>The underlying blob store: for the store's own rooms and the tests of the layout, never for callers.</summary>
    internal IBlobStore Blobs => _context.Blobs;

    /// <summary>Segment names an adapter id may not use after its first segment.</summary>
    public static IReadOnlyList<string> ReservedSegments => BlobLayout.ReservedSegments;

    /// <summary>True when the id is valid (<see cref="RequestValidation.IsValidAdapterId"/>) and storable (no reserved segment).</summary>
    public static bool IsStorableAdapterId(string? adapterId) => BlobLayout.IsStorableAdapterId(adapterId);

    /// <summary>A fresh replacement-set name: <c>r-&lt;UTC yyyyMMddTHHmmssZ&gt;-&lt;8 hex&gt;</c>.</summary>
    public static string NewReplacementName(TimeProvider? time = null) => ReplacementSetStore.NewName(time);

    /// <summary>URI of a version's folder (the <c>adapterUri</c> of the events).</summary>
    public string VersionUri(string adapterId, int version) => _context.Blobs.UriFor(BlobLayout.Version(adapterId, version));

    /// <summary>URI of the store's root of adapters, for messages.</summary>
    public string Location => _context.Blobs.UriFor("adapters/");

    // -------------------------------------------------------------------------------------------- heads and versions

    public Task<bool> IsRegisteredAsync(string adapterId, CancellationToken cancellationToken = default) => _heads.ExistsAsync(adapterId, cancellationToken);

    /// <summary>The adapter's head (version and ETag), or null when it is not registered.</summary>
    public Task<AdapterHead?> GetHeadAsync(string adapterId, CancellationToken cancellationToken = default) => _heads.GetAsync(adapterId, cancellationToken);

    /// <summary>Registered adapters (those with a head), in ordinal order.</summary>
    public IAsyncEnumerable<string> ListAdaptersAsync(CancellationToken cancellationToken = default) => _heads.ListAdaptersAsync(cancellationToken);

    /// <summary>The manifest of a version, or null when the version is missing or incomplete.</summary>
    public Task<AdapterManifest?> ReadManifestAsync(string adapterId, int version, CancellationToken cancellationToken = default) =>
        _context.ReadManifestAsync(adapterId, version, cancellationToken);

    /// <summary>The reference of a complete version, from its manifest (the weights' digest recorded at writing).</summary>
    public AdapterVersionRef VersionRef(AdapterManifest manifest) =>
        new(manifest.AdapterId, manifest.Version, VersionUri(manifest.AdapterId, manifest.Version),
            manifest.WeightsSha256 ?? throw new InvalidDataException($"The manifest of version {manifest.Version} of adapter '{manifest.AdapterId}' has no digest of {StoredFileNames.AdapterWeights}."));

    /// <summary>The version's reference if it is complete, else null.</summary>
    public async Task<AdapterVersionRef?> GetVersionAsync(string adapterId, int version, CancellationToken cancellationToken = default) =>
        await ReadManifestAsync(adapterId, version, cancellationToken).ConfigureAwait(false) is { } manifest ? VersionRef(manifest) : null;

    /// <summary>Complete versions (with a manifest), ascending.</summary>
    public async Task<IReadOnlyList<int>> ListVersionsAsync(string adapterId, CancellationToken cancellationToken = default)
    {
        var versions = new SortedSet<int>();
        string prefix = BlobLayout.Versions(adapterId);
        await foreach (var name in _context.Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
        {
            string rest = name[prefix.Length..];
            if (rest.EndsWith("/" + StoredFileNames.Manifest, StringComparison.Ordinal) && rest.Length == 7 + StoredFileNames.Manifest.Length
                && BlobLayout.VersionNumber(rest) is int v)
                versions.Add(v);
        }
        return [.. versions];
    }

    // -------------------------------------------------------------------------------------------- registration and publication

    /// <summary>Registers an adapter as version 0 (see <see cref="AdapterRegistration"/>). Throws
    /// <see cref="AdapterAlreadyRegisteredException"/> if it exists.</summary>
    public Task<AdapterVersionRef> RegisterAsync(string adapterId, RegistrationFiles files, CancellationToken cancellationToken = default) =>
        _registration.RegisterAsync(adapterId, files, cancellationToken);

    /// <summary>Registers an adapter and its gradient cache (and optionally its base model) as version 0.</summary>
    public Task<AdapterVersionRef> RegisterAsync(string adapterId, string localAdapterDir, string localCacheDir, string? localModelDir = null,
        CancellationToken cancellationToken = default) =>
        _registration.RegisterAsync(adapterId, new RegistrationFiles(localAdapterDir, localCacheDir, localModelDir), cancellationToken);

    /// <summary>Registers an adapter and its gradient cache as version 0.</summary>
    public Task<AdapterVersionRef> RegisterAsync(string adapterId, string localAdapterDir, string localCacheDir, CancellationToken cancellationToken) =>
        RegisterAsync(adapterId, localAdapterDir, localCacheDir, null, cancellationToken);

    /// <summary>
    /// Publishes a version on top of <see cref="VersionDraft.Parent"/> as one call (see <see cref="VersionPublisher"/>):
    /// hashes the files once, writes the manifest, the version and the head, records the requests. The result is
    /// <see cref="PublishResult.Published"/> or <see cref="PublishResult.HeadMoved"/> (recompute on the new head).
    /// </summary>
    /// <param name="claimWait">How long to wait for another writer's claim on the next number before taking the next free
    /// number (<c>Eraser:Worker:ClaimWait</c>).</param>
    public Task<PublishResult> PublishVersionAsync(VersionDraft draft, TimeSpan claimWait, CancellationToken cancellationToken = default) =>
        _publisher.PublishAsync(draft, claimWait, cancellationToken);

    /// <summary>The version that applied each of <paramref name="requestIds"/> that the chain up to <paramref name="head"/>
    /// has applied (redelivery detection); absent ids were not applied.</summary>
    public Task<Dictionary<string, int>> FindAppliedAsync(AdapterManifest head, IReadOnlyCollection<string> requestIds, CancellationToken cancellationToken = default) =>
        _markers.FindAsync(head.AdapterId, head, requestIds, cancellationToken);

    /// <summary>How many requests the chain up to <paramref name="head"/> has applied (one listing of the markers).</summary>
    public Task<int> CountAppliedRequestsAsync(AdapterManifest head, CancellationToken cancellationToken = default) => _markers.CountAsync(head, cancellationToken);

    /// <summary>Low level, for tests and tools: writes a version folder that holds its own <c>manifest.json</c>.</summary>
    internal async Task<AdapterVersionRef> WriteVersionAsync(string adapterId, int version, string localDir, CancellationToken cancellationToken = default)
    {
        BlobLayout.CheckAdapterId(adapterId);
        BlobLayout.CheckVersion(version, 1);
        var (files, manifest) = await VersionWriter.ReadFolderAsync(localDir, cancellationToken).ConfigureAwait(false);
        return await _writer.WriteAsync(adapterId, version, files, manifest, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Low level, for tests and tools: moves the head with If-Match.</summary>
    internal Task<bool> TryAdvanceHeadAsync(string adapterId, int newVersion, string etag, CancellationToken cancellationToken = default) =>
        _heads.TryAdvanceAsync(adapterId, newVersion, etag, cancellationToken);

    /// <summary>Low level, for tests and tools: a version number nobody has used.</summary>
    internal async Task<int> NextFreeVersionAsync(string adapterId, CancellationToken cancellationToken = default)
    {
        var head = await GetHeadAsync(adapterId, cancellationToken).ConfigureAwait(false) ?? throw new AdapterNotFoundException(adapterId);
        return await _writer.NextFreeVersionAsync(adapterId, head.Version, cancellationToken).ConfigureAwait(false);
    }

    // -------------------------------------------------------------------------------------------- downloads

    /// <summary>Downloads a complete version, every file verified against its manifest; <see cref="VersionNotFoundException"/>
    /// if the version is missing or incomplete.</summary>
    public Task<AdapterVersionRef> DownloadVersionAsync(string adapterId, int version, string localDir, CancellationToken cancellationToken = default) =>
        _downloads.DownloadVersionAsync(adapterId, version, localDir, cancellationToken);

    /// <summary>Downloads the base gradient cache, every file verified against the base manifest.</summary>
    public Task DownloadCacheAsync(string adapterId, string localDir, CancellationToken cancellationToken = default) =>
        _downloads.DownloadCacheAsync(adapterId, localDir, cancellationToken);

    /// <summary>Keeps a file derived from the cache (the worker's Gram, <c>cache/derived/</c>) for the next process.</summary>
    public Task UploadCacheDerivedAsync(string adapterId, string localFile, bool replace, CancellationToken cancellationToken = default) =>
        _downloads.UploadCacheDerivedAsync(adapterId, localFile, replace, cancellationToken);

    /// <summary>One file of the registered gradient cache (e.g. <c>cache.json</c> or an ids file), verified; null when absent.</summary>
    public Task<byte[]?> ReadCacheFileAsync(string adapterId, string relativePath, CancellationToken cancellationToken = default) =>
        _downloads.ReadCacheFileAsync(adapterId, relativePath, cancellationToken);

    /// <summary>The registered model's files (relative path → SHA-256), or null when registered without one.</summary>
    public Task<IReadOnlyDictionary<string, string>?> GetModelFilesAsync(string adapterId, CancellationToken cancellationToken = default) =>
        _downloads.GetModelFilesAsync(adapterId, cancellationToken);

    /// <summary>Downloads the registered model, verified; false when there is none.</summary>
    public Task<bool> DownloadModelAsync(string adapterId, string localDir, CancellationToken cancellationToken = default) =>
        _downloads.DownloadModelAsync(adapterId, localDir, cancellationToken);

    // -------------------------------------------------------------------------------------------- training texts

    /// <summary>Downloads the registered training texts (one JSONL file), verified; false when there are none.</summary>
    public Task<bool> DownloadTrainingTextsAsync(string adapterId, string localFile, CancellationToken cancellationToken = default) =>
        _training.DownloadAsync(adapterId, localFile, cancellationToken);

    /// <summary>Deletes the training texts of <paramref name="sampleIds"/> from the store (see <see cref="TrainingTexts"/>);
    /// null when the adapter has none.</summary>
    public Task<PurgeRecord?> PurgeTrainingTextsAsync(string adapterId, IReadOnlyCollection<string> sampleIds, CancellationToken cancellationToken = default) =>
        _training.PurgeAsync(adapterId, sampleIds, cancellationToken);

    // -------------------------------------------------------------------------------------------- replacement sets

    /// <summary>Uploads a replacement set under <paramref name="name"/> and returns its replacements URI
    /// (<see cref="ReplacementsExistException"/> if a complete set of that name exists).</summary>
    public Task<string> UploadReplacementsAsync(string adapterId, string name, string localCacheDir, CancellationToken cancellationToken = default) =>
        _replacements.UploadAsync(adapterId, name, localCacheDir, cancellationToken);

    /// <summary>True when a complete replacement set of that name exists.</summary>
    public Task<bool> ReplacementSetExistsAsync(string adapterId, string name, CancellationToken cancellationToken = default) =>
        _replacements.ExistsAsync(adapterId, name, cancellationToken);

    /// <summary>Downloads the replacement set a URI names (<see cref="ReplacementsNotFoundException"/> when missing).</summary>
    public Task DownloadReplacementsAsync(string adapterId, string replacementsUri, string localDir, CancellationToken cancellationToken = default) =>
        _replacements.DownloadAsync(adapterId, replacementsUri, localDir, cancellationToken);

    // -------------------------------------------------------------------------------------------- maintenance

    /// <summary>Removes what dead writers left behind (see <see cref="VersionPruner"/>).</summary>
    public Task<PruneReport> PruneAsync(string adapterId, bool dryRun = false, CancellationToken cancellationToken = default) =>
        _pruner.PruneAsync(adapterId, dryRun, cancellationToken);
}
