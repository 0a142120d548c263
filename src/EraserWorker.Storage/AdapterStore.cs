using System.Globalization;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using EraserWorker.Contracts;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace EraserWorker.Storage;

/// <summary>Current version of an adapter, as read from <c>head.json</c>, with the ETag to update it.</summary>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Version">Current version (0 = the registered base).</param>
/// <param name="ETag">ETag of <c>head.json</c>, for <see cref="AdapterStore.TryAdvanceHeadAsync"/>.</param>
/// <param name="UpdatedAt">When the head was last written.</param>
public sealed record AdapterHead(string AdapterId, int Version, string ETag, DateTimeOffset UpdatedAt);

/// <summary>A complete adapter version.</summary>
/// <param name="AdapterId">The adapter.</param>
/// <param name="Version">The version.</param>
/// <param name="Uri">URI of the version's folder (<see cref="IBlobStore.UriFor"/>), the <c>adapterUri</c> of the events.</param>
/// <param name="Sha256">Lowercase hex SHA-256 of its <c>adapter_model.safetensors</c>.</param>
public sealed record AdapterVersionRef(string AdapterId, int Version, string Uri, string Sha256);

/// <summary>
/// The SPEC §4 layout over an <see cref="IBlobStore"/>:
/// <code>
/// adapters/&lt;adapterId&gt;/head.json                       {"adapterId","version","updatedAt"}; replaced only with If-Match
/// adapters/&lt;adapterId&gt;/versions/&lt;NNNNNN&gt;/...            adapter_config.json, adapter_model.safetensors, manifest.json (last)
/// adapters/&lt;adapterId&gt;/cache/...                       the base gradient cache (cache.json last)
/// adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;/...         replacement sets (cache.json last)
/// adapters/&lt;adapterId&gt;/model/...                       optional: the base model and tokenizer (registered with the adapter)
/// adapters/&lt;adapterId&gt;/claims/&lt;NNNNNN&gt;.json             transient: who is writing a version right now
/// </code>
/// Blob names are built only from ids that pass <see cref="RequestValidation.IsValidAdapterId"/> and
/// <see cref="IsStorableAdapterId"/>, version numbers 0–999999, names matching
/// <see cref="RequestValidation.ReplacementNamePattern"/> and local file names matching
/// <see cref="LocalFileNamePattern"/>; anything else throws <see cref="ArgumentException"/>.
/// Thread-safe; several processes and machines may share one store.
/// </summary>
public sealed partial class AdapterStore
{
    /// <summary>The manifest of a version; a version is complete iff it exists.</summary>
    public const string ManifestFileName = "manifest.json";

    /// <summary>The adapter weights file.</summary>
    public const string AdapterModelFileName = "adapter_model.safetensors";

    /// <summary>The PEFT adapter configuration file.</summary>
    public const string AdapterConfigFileName = "adapter_config.json";

    /// <summary>The index of a gradient cache or replacement set; written last.</summary>
    public const string CacheIndexFileName = "cache.json";

    /// <summary>Highest version number (six digits).</summary>
    public const int MaxVersion = 999_999;

    /// <summary>Names of local files (each path segment) that may be uploaded or downloaded.</summary>
    public const string LocalFileNamePattern = @"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$(?!\n)";

    /// <summary>Segment names that an adapter id may not use after its first segment, because the adapter
    /// one level up uses them for its own data (<c>a/cache</c> would live inside adapter <c>a</c>'s cache).</summary>
    public static IReadOnlyList<string> ReservedSegments { get; } = ["head.json", "versions", "cache", "replacements", "claims", "model"];

    /// <summary>The member of the base (version-0) manifest that lists the registered model's files (relative path →
    /// <c>{"sha256","bytes"}</c>); absent when the adapter was registered without a model.</summary>
    public const string ModelFilesMember = "modelFiles";

    private static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly TimeSpan _claimTimeout;

    /// <summary>Creates the store.</summary>
    /// <param name="blobs">The blob store.</param>
    /// <param name="options">Uses <see cref="StorageOptions.WriterId"/> and <see cref="StorageOptions.VersionClaimTimeout"/>.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Clock (default: system).</param>
    public AdapterStore(IBlobStore blobs, StorageOptions? options = null, ILogger<AdapterStore>? logger = null, TimeProvider? timeProvider = null)
    {
        Blobs = blobs ?? throw new ArgumentNullException(nameof(blobs));
        options ??= new StorageOptions();
        string writerId = string.IsNullOrWhiteSpace(options.WriterId)
            ? $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid():N}"
            : options.WriterId;
        WriterId = writerId.Length <= 200 ? writerId : writerId[^200..];
        _claimTimeout = options.VersionClaimTimeout;
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
    }

    /// <summary>The underlying blob store.</summary>
    public IBlobStore Blobs { get; }

    /// <summary>This writer's identity in version claims.</summary>
    public string WriterId { get; }

    [GeneratedRegex(LocalFileNamePattern, RegexOptions.CultureInvariant)]
    private static partial Regex LocalFileNameRegex();

    // ------------------------------------------------------------------------------------------ names

    /// <summary>True when <paramref name="adapterId"/> is valid (<see cref="RequestValidation.IsValidAdapterId"/>)
    /// and uses none of the <see cref="ReservedSegments"/> after its first segment.</summary>
    public static bool IsStorableAdapterId(string? adapterId)
    {
        if (!RequestValidation.IsValidAdapterId(adapterId))
            return false;
        var segments = adapterId!.Split('/');
        for (int i = 1; i < segments.Length; i++)
        {
            if (ReservedSegments.Contains(segments[i]))
                return false;
        }
        return true;
    }

    /// <summary>Blob prefix of an adapter: <c>adapters/&lt;adapterId&gt;/</c>.</summary>
    public static string AdapterPrefix(string adapterId)
    {
        CheckAdapterId(adapterId);
        return $"adapters/{adapterId}/";
    }

    /// <summary>Blob name of an adapter's head.</summary>
    public static string HeadName(string adapterId) => AdapterPrefix(adapterId) + "head.json";

    /// <summary>Blob prefix of a version: <c>adapters/&lt;adapterId&gt;/versions/&lt;NNNNNN&gt;/</c>.</summary>
    public static string VersionPrefix(string adapterId, int version)
    {
        CheckVersion(version, 0);
        return AdapterPrefix(adapterId) + "versions/" + version.ToString("D6", CultureInfo.InvariantCulture) + "/";
    }

    /// <summary>Blob prefix of the base gradient cache.</summary>
    public static string CachePrefix(string adapterId) => AdapterPrefix(adapterId) + "cache/";

    /// <summary>Blob prefix of the base model registered with the adapter (config, weights, tokenizer).</summary>
    public static string ModelPrefix(string adapterId) => AdapterPrefix(adapterId) + "model/";

    /// <summary>Blob prefix of a replacement set.</summary>
    public static string ReplacementsPrefix(string adapterId, string name)
    {
        if (!RequestValidation.IsValidReplacementName(name))
            throw new ArgumentException($"Invalid replacement-set name '{name}' (expected {RequestValidation.ReplacementNamePattern}).", nameof(name));
        return AdapterPrefix(adapterId) + "replacements/" + name + "/";
    }

    private static string ClaimName(string adapterId, int version) =>
        AdapterPrefix(adapterId) + "claims/" + version.ToString("D6", CultureInfo.InvariantCulture) + ".json";

    /// <summary>A fresh replacement-set name: <c>r-&lt;UTC yyyyMMddTHHmmssZ&gt;-&lt;8 hex&gt;</c> (lowercase).</summary>
    public static string NewReplacementName(TimeProvider? time = null)
    {
        var now = (time ?? TimeProvider.System).GetUtcNow();
        return "r-" + now.ToString("yyyyMMdd't'HHmmss'z'", CultureInfo.InvariantCulture) + "-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    }

    /// <summary>URI of a version's folder (the <c>adapterUri</c> of the events).</summary>
    public string VersionUri(string adapterId, int version) => Blobs.UriFor(VersionPrefix(adapterId, version));

    // ------------------------------------------------------------------------------------------ head

    /// <summary>True when the adapter is registered (has a head).</summary>
    public async Task<bool> IsRegisteredAsync(string adapterId, CancellationToken cancellationToken = default) =>
        await Blobs.GetPropertiesAsync(HeadName(adapterId), cancellationToken).ConfigureAwait(false) is not null;

    /// <summary>The adapter's head (version and ETag), or null when it is not registered.</summary>
    public async Task<AdapterHead?> GetHeadAsync(string adapterId, CancellationToken cancellationToken = default)
    {
        var (node, etag) = await ReadJsonAsync(HeadName(adapterId), cancellationToken).ConfigureAwait(false);
        if (node is null)
            return null;
        try
        {
            string id = node["adapterId"]!.GetValue<string>();
            int version = node["version"]!.GetValue<int>();
            var updatedAt = node["updatedAt"]!.GetValue<DateTimeOffset>();
            if (id != adapterId || version is < 0 or > MaxVersion)
                throw new InvalidDataException($"head.json of adapter '{adapterId}' names adapter '{id}', version {version}.");
            return new AdapterHead(adapterId, version, etag!, updatedAt);
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"head.json of adapter '{adapterId}' is malformed.", e);
        }
    }

    /// <summary>
    /// Moves the head to <paramref name="newVersion"/> if it is still at the ETag <paramref name="etag"/>
    /// (from <see cref="GetHeadAsync"/>). False when another writer moved it first: reload and recompute.
    /// Throws <see cref="VersionNotFoundException"/> if the version is not complete.
    /// </summary>
    public async Task<bool> TryAdvanceHeadAsync(string adapterId, int newVersion, string etag, CancellationToken cancellationToken = default)
    {
        CheckVersion(newVersion, 1);
        ArgumentException.ThrowIfNullOrEmpty(etag);
        if (await Blobs.GetPropertiesAsync(VersionPrefix(adapterId, newVersion) + ManifestFileName, cancellationToken).ConfigureAwait(false) is null)
            throw new VersionNotFoundException(adapterId, newVersion);
        try
        {
            await UploadJsonAsync(HeadName(adapterId), HeadJson(adapterId, newVersion), BlobCondition.IfMatch(etag), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (BlobConditionFailedException)
        {
            return false;
        }
    }

    /// <summary>Registered adapters (those with a head), in ordinal order.</summary>
    public async IAsyncEnumerable<string> ListAdaptersAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        await foreach (var name in Blobs.ListAsync("adapters/", cancellationToken).ConfigureAwait(false))
        {
            if (!name.EndsWith("/head.json", StringComparison.Ordinal))
                continue;
            string id = name["adapters/".Length..^"/head.json".Length];
            if (IsStorableAdapterId(id))
                yield return id;
        }
    }

    // ------------------------------------------------------------------------------------------ register

    /// <summary>
    /// Registers an adapter: uploads the gradient cache (<paramref name="localCacheDir"/>, <c>cache.json</c>
    /// last), the adapter (<paramref name="localAdapterDir"/>: <c>adapter_config.json</c>,
    /// <c>adapter_model.safetensors</c>) as version 0 with a manifest written by the store, then creates the
    /// head with <c>If-None-Match</c>. Throws <see cref="AdapterAlreadyRegisteredException"/> if the head exists.
    /// Nothing is visible before the head exists, so a registration interrupted by a crash can simply be run
    /// again (it replaces the leftovers); a concurrent registration with different files gets
    /// <see cref="VersionConflictException"/> (version 0).
    /// </summary>
    public Task<AdapterVersionRef> RegisterAsync(string adapterId, string localAdapterDir, string localCacheDir, CancellationToken cancellationToken = default) =>
        RegisterAsync(adapterId, localAdapterDir, localCacheDir, null, cancellationToken);

    /// <summary>
    /// Registers an adapter as <see cref="RegisterAsync(string, string, string, CancellationToken)"/> does and, when
    /// <paramref name="localModelDir"/> is given, also its base model: every file of that folder (the caller selects
    /// them: config.json, weights, tokenizer) is uploaded under <c>adapters/&lt;adapterId&gt;/model/</c> before the base
    /// manifest, which lists them with their SHA-256 in <see cref="ModelFilesMember"/>. The folder must hold
    /// <c>config.json</c>. The store does not interpret the files; <see cref="DownloadModelAsync"/> returns them.
    /// </summary>
    public async Task<AdapterVersionRef> RegisterAsync(string adapterId, string localAdapterDir, string localCacheDir, string? localModelDir,
        CancellationToken cancellationToken = default)
    {
        CheckAdapterId(adapterId);
        var adapterFiles = await ListLocalFilesAsync(localAdapterDir, cancellationToken).ConfigureAwait(false);
        var cacheFiles = await ListLocalFilesAsync(localCacheDir, cancellationToken).ConfigureAwait(false);
        var modelFiles = localModelDir is null ? null : await ListLocalFilesAsync(localModelDir, cancellationToken).ConfigureAwait(false);
        if (modelFiles is not null)
            Require(modelFiles, ModelConfigFileName, localModelDir!);
        var model = Require(adapterFiles, AdapterModelFileName, localAdapterDir);
        Require(adapterFiles, AdapterConfigFileName, localAdapterDir);
        Require(cacheFiles, CacheIndexFileName, localCacheDir);
        if (adapterFiles.Any(f => f.RelativePath == ManifestFileName))
            throw new ArgumentException($"The adapter folder '{localAdapterDir}' must not contain {ManifestFileName}: the store writes the base version's manifest.", nameof(localAdapterDir));

        string head = HeadName(adapterId);
        if (await Blobs.GetPropertiesAsync(head, cancellationToken).ConfigureAwait(false) is not null)
            throw new AdapterAlreadyRegisteredException(adapterId);

        string fingerprint = Fingerprint(adapterFiles.Select(f => ("version/" + f.RelativePath, f.Sha256))
            .Concat(cacheFiles.Select(f => ("cache/" + f.RelativePath, f.Sha256)))
            .Concat((modelFiles ?? []).Select(f => ("model/" + f.RelativePath, f.Sha256))));
        var claim = await AcquireClaimAsync(adapterId, 0, fingerprint, cancellationToken).ConfigureAwait(false);
        bool done = false;
        try
        {
            string cachePrefix = CachePrefix(adapterId);
            foreach (var file in cacheFiles.Where(f => f.RelativePath != CacheIndexFileName))
                await PutReplacingLeftoverAsync(cachePrefix + file.RelativePath, file, e => Conflict(adapterId, 0, "a cache file changed during registration", e), cancellationToken).ConfigureAwait(false);
            await PutReplacingLeftoverAsync(cachePrefix + CacheIndexFileName, Require(cacheFiles, CacheIndexFileName, localCacheDir), e => Conflict(adapterId, 0, "cache.json changed during registration", e), cancellationToken).ConfigureAwait(false);

            if (modelFiles is not null)
            {
                string modelPrefix = ModelPrefix(adapterId);
                foreach (var file in modelFiles)
                    await PutReplacingLeftoverAsync(modelPrefix + file.RelativePath, file, e => Conflict(adapterId, 0, "a model file changed during registration", e), cancellationToken).ConfigureAwait(false);
            }

            string versionPrefix = VersionPrefix(adapterId, 0);
            foreach (var file in adapterFiles)
                await PutReplacingLeftoverAsync(versionPrefix + file.RelativePath, file, e => Conflict(adapterId, 0, "a version-0 file changed during registration", e), cancellationToken).ConfigureAwait(false);

            var manifest = new JsonObject
            {
                ["format"] = "eraser.manifest/v1",
                ["adapterId"] = adapterId,
                ["version"] = 0,
                ["parentVersion"] = null,
                ["kind"] = "base",
                ["requestIds"] = new JsonArray(),
                ["files"] = FilesNode(adapterFiles),
                ["cacheFiles"] = FilesNode(cacheFiles),
                ["createdAt"] = _time.GetUtcNow(),
                ["writerId"] = WriterId,
            };
            if (modelFiles is not null)
                manifest[ModelFilesMember] = FilesNode(modelFiles);
            await EnsureClaimHeldAsync(claim, cancellationToken).ConfigureAwait(false);
            // The base manifest is not visible before the head exists: a leftover one is replaced.
            await PutReplacingLeftoverAsync(versionPrefix + ManifestFileName, LocalFile.FromBytes(ManifestFileName, JsonBytes(manifest)),
                e => Conflict(adapterId, 0, "the base manifest changed during registration", e), cancellationToken).ConfigureAwait(false);

            try
            {
                await UploadJsonAsync(head, HeadJson(adapterId, 0), BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
            }
            catch (BlobConditionFailedException e)
            {
                throw new AdapterAlreadyRegisteredException(adapterId, e);
            }
            done = true;
            return new AdapterVersionRef(adapterId, 0, VersionUri(adapterId, 0), model.Sha256);
        }
        finally
        {
            await ReleaseClaimAsync(claim, done).ConfigureAwait(false);
        }
    }

    // ------------------------------------------------------------------------------------------ versions

    /// <summary>
    /// Writes version <paramref name="version"/> (≥ 1) from <paramref name="localDir"/>, which must hold
    /// <c>adapter_model.safetensors</c> and <c>manifest.json</c> (a JSON object whose content the worker
    /// defines; if it has a <c>files</c> object mapping file names to <c>{"sha256": …}</c>, those hashes are
    /// checked against the files). Every file is uploaded with <c>If-None-Match</c>, <c>manifest.json</c> last;
    /// the version is complete iff its manifest exists.
    /// <para>
    /// Errors: <see cref="VersionExistsException"/> if the manifest exists. A version left partial by a writer
    /// that crashed (files, no manifest) is completed: before writing, the writer takes a claim
    /// (<c>claims/NNNNNN.json</c>, created with <c>If-None-Match</c>; it may take over an existing claim with
    /// <c>If-Match</c> when that claim has expired (<see cref="StorageOptions.VersionClaimTimeout"/>), or has
    /// this store's <see cref="WriterId"/>, or is for byte-identical files); each leftover file is then
    /// replaced with <c>If-Match</c> on the leftover's ETag, the claim is re-checked, and the manifest is
    /// created with <c>If-None-Match</c>. A live claim of another writer with other files gives
    /// <see cref="VersionConflictException"/>.
    /// </para>
    /// </summary>
    public async Task<AdapterVersionRef> WriteVersionAsync(string adapterId, int version, string localDir, CancellationToken cancellationToken = default)
    {
        CheckAdapterId(adapterId);
        CheckVersion(version, 1);
        var files = await ListLocalFilesAsync(localDir, cancellationToken).ConfigureAwait(false);
        var model = Require(files, AdapterModelFileName, localDir);
        var manifestFile = Require(files, ManifestFileName, localDir);
        CheckManifestFiles(manifestFile, files, localDir);

        string prefix = VersionPrefix(adapterId, version);
        string manifestName = prefix + ManifestFileName;
        if (await Blobs.GetPropertiesAsync(manifestName, cancellationToken).ConfigureAwait(false) is not null)
            throw new VersionExistsException(adapterId, version);

        var claim = await AcquireClaimAsync(adapterId, version, Fingerprint(files.Select(f => (f.RelativePath, f.Sha256))), cancellationToken).ConfigureAwait(false);
        bool done = false;
        try
        {
            foreach (var file in files.Where(f => f.RelativePath != ManifestFileName))
                await PutReplacingLeftoverAsync(prefix + file.RelativePath, file, e => Conflict(adapterId, version, $"{file.RelativePath} changed while it was written", e), cancellationToken).ConfigureAwait(false);
            await EnsureClaimHeldAsync(claim, cancellationToken).ConfigureAwait(false);
            try
            {
                await UploadFileAsync(manifestName, manifestFile, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
            }
            catch (BlobConditionFailedException e)
            {
                throw new VersionExistsException(adapterId, version, e);
            }
            done = true;
            return new AdapterVersionRef(adapterId, version, VersionUri(adapterId, version), model.Sha256);
        }
        finally
        {
            await ReleaseClaimAsync(claim, done).ConfigureAwait(false);
        }
    }

    /// <summary>The version's reference if it is complete, else null. Its SHA-256 comes from the manifest's
    /// <c>files</c> entry when present, else the model file is read and hashed.</summary>
    public async Task<AdapterVersionRef?> GetVersionAsync(string adapterId, int version, CancellationToken cancellationToken = default)
    {
        var manifest = await ReadManifestAsync(adapterId, version, cancellationToken).ConfigureAwait(false);
        if (manifest is null)
            return null;
        string? sha = ManifestSha256(manifest, AdapterModelFileName);
        if (sha is null)
        {
            using var hasher = new HashingStream(Stream.Null);
            if (await Blobs.DownloadAsync(VersionPrefix(adapterId, version) + AdapterModelFileName, hasher, cancellationToken).ConfigureAwait(false) is null)
                throw new InvalidDataException($"Version {version} of adapter '{adapterId}' has a manifest but no {AdapterModelFileName}.");
            sha = hasher.HexHash();
        }
        return new AdapterVersionRef(adapterId, version, VersionUri(adapterId, version), sha);
    }

    /// <summary>The manifest of a version, or null when the version is missing or incomplete.</summary>
    public async Task<JsonObject?> ReadManifestAsync(string adapterId, int version, CancellationToken cancellationToken = default)
    {
        var (node, _) = await ReadJsonAsync(VersionPrefix(adapterId, version) + ManifestFileName, cancellationToken).ConfigureAwait(false);
        return node switch
        {
            null => null,
            JsonObject o => o,
            _ => throw new InvalidDataException($"The manifest of version {version} of adapter '{adapterId}' is not a JSON object."),
        };
    }

    /// <summary>Complete versions (with a manifest), ascending.</summary>
    public async Task<IReadOnlyList<int>> ListVersionsAsync(string adapterId, CancellationToken cancellationToken = default)
    {
        var versions = new SortedSet<int>();
        string prefix = AdapterPrefix(adapterId) + "versions/";
        await foreach (var name in Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
        {
            string rest = name[prefix.Length..];
            if (rest.Length == 6 + 1 + ManifestFileName.Length && rest.EndsWith("/" + ManifestFileName, StringComparison.Ordinal)
                && int.TryParse(rest.AsSpan(0, 6), NumberStyles.None, CultureInfo.InvariantCulture, out int v))
                versions.Add(v);
        }
        return [.. versions];
    }

    /// <summary>
    /// A version number nobody has used yet: one more than the highest of the head, any version folder
    /// (complete or partial) and any claim. Writing there never meets leftovers or a live writer.
    /// </summary>
    public async Task<int> NextFreeVersionAsync(string adapterId, CancellationToken cancellationToken = default)
    {
        int highest = (await GetHeadAsync(adapterId, cancellationToken).ConfigureAwait(false))?.Version ?? throw new AdapterNotFoundException(adapterId);
        foreach (var sub in new[] { "versions/", "claims/" })
        {
            string prefix = AdapterPrefix(adapterId) + sub;
            await foreach (var name in Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
            {
                string rest = name[prefix.Length..];
                if (rest.Length >= 6 && int.TryParse(rest.AsSpan(0, 6), NumberStyles.None, CultureInfo.InvariantCulture, out int v))
                    highest = Math.Max(highest, v);
            }
        }
        return highest >= MaxVersion ? throw new InvalidOperationException($"Adapter '{adapterId}' has used every version number.") : highest + 1;
    }

    /// <summary>
    /// Downloads a complete version into <paramref name="localDir"/> (created if needed; files replaced
    /// atomically). Hashes listed in the manifest's <c>files</c> are verified (<see cref="InvalidDataException"/>
    /// on mismatch). Throws <see cref="VersionNotFoundException"/> if the version is missing or incomplete.
    /// </summary>
    public async Task<AdapterVersionRef> DownloadVersionAsync(string adapterId, int version, string localDir, CancellationToken cancellationToken = default)
    {
        var manifest = await ReadManifestAsync(adapterId, version, cancellationToken).ConfigureAwait(false)
            ?? throw new VersionNotFoundException(adapterId, version);
        var hashes = await DownloadPrefixAsync(VersionPrefix(adapterId, version), localDir, cancellationToken).ConfigureAwait(false);
        foreach (var (file, sha) in hashes)
        {
            string? expected = ManifestSha256(manifest, file);
            if (expected is not null && !string.Equals(expected, sha, StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"{file} of version {version} of adapter '{adapterId}' has SHA-256 {sha}, but its manifest says {expected}.");
        }
        if (!hashes.TryGetValue(AdapterModelFileName, out string? modelSha))
            throw new InvalidDataException($"Version {version} of adapter '{adapterId}' has no {AdapterModelFileName}.");
        return new AdapterVersionRef(adapterId, version, VersionUri(adapterId, version), modelSha);
    }

    // ------------------------------------------------------------------------------------------ model

    /// <summary>The file of a registered model that must be present (the Hugging Face model configuration).</summary>
    public const string ModelConfigFileName = "config.json";

    /// <summary>
    /// The files of the model registered with the adapter (relative path → SHA-256, from the base manifest's
    /// <see cref="ModelFilesMember"/>), or null when it was registered without one. Throws
    /// <see cref="AdapterNotFoundException"/> if the adapter is not registered.
    /// </summary>
    public async Task<IReadOnlyDictionary<string, string>?> GetModelFilesAsync(string adapterId, CancellationToken cancellationToken = default)
    {
        CheckAdapterId(adapterId);
        var manifest = await ReadManifestAsync(adapterId, 0, cancellationToken).ConfigureAwait(false);
        if (manifest is null)
        {
            if (!await IsRegisteredAsync(adapterId, cancellationToken).ConfigureAwait(false))
                throw new AdapterNotFoundException(adapterId);
            throw new InvalidDataException($"Adapter '{adapterId}' has no base manifest.");
        }
        if (manifest[ModelFilesMember] is not JsonObject listed)
            return null;
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, _) in listed)
        {
            if (!name.Split('/').All(s => LocalFileNameRegex().IsMatch(s)))
                throw new InvalidDataException($"The base manifest of adapter '{adapterId}' lists model file '{name}', which cannot be a local file name.");
            files[name] = ManifestSha256(new JsonObject { ["files"] = listed.DeepClone() }, name)
                ?? throw new InvalidDataException($"The base manifest of adapter '{adapterId}' lists model file '{name}' without a SHA-256.");
        }
        return files;
    }

    /// <summary>
    /// Downloads the model registered with the adapter into <paramref name="localDir"/> — exactly the files the base
    /// manifest lists, each verified against its SHA-256 (<see cref="InvalidDataException"/> on a mismatch or a missing
    /// file). Returns false (and downloads nothing) when the adapter was registered without a model; throws
    /// <see cref="AdapterNotFoundException"/> if it is not registered.
    /// </summary>
    public async Task<bool> DownloadModelAsync(string adapterId, string localDir, CancellationToken cancellationToken = default)
    {
        var files = await GetModelFilesAsync(adapterId, cancellationToken).ConfigureAwait(false);
        if (files is null)
            return false;
        ArgumentException.ThrowIfNullOrWhiteSpace(localDir);
        string root = Path.GetFullPath(localDir);
        string prefix = ModelPrefix(adapterId);
        foreach (var (relative, expected) in files)
        {
            string target = Path.Combine(root, relative.Replace('/', Path.DirectorySeparatorChar));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            string temp = target + ".part-" + Guid.NewGuid().ToString("N");
            try
            {
                string sha;
                var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
                await using (file.ConfigureAwait(false))
                {
                    using var hasher = new HashingStream(file);
                    if (await Blobs.DownloadAsync(prefix + relative, hasher, cancellationToken).ConfigureAwait(false) is null)
                        throw new InvalidDataException($"Model file '{relative}' of adapter '{adapterId}' is listed in its base manifest but missing from the store.");
                    sha = hasher.HexHash();
                }
                if (!string.Equals(sha, expected, StringComparison.OrdinalIgnoreCase))
                    throw new InvalidDataException($"Model file '{relative}' of adapter '{adapterId}' has SHA-256 {sha}, but the base manifest says {expected}.");
                File.Move(temp, target, overwrite: true);
            }
            finally
            {
                if (File.Exists(temp))
                    File.Delete(temp);
            }
        }
        return true;
    }

    // ------------------------------------------------------------------------------------------ caches

    /// <summary>Downloads the base gradient cache into <paramref name="localDir"/>. Throws
    /// <see cref="AdapterNotFoundException"/> if the adapter is not registered.</summary>
    public async Task DownloadCacheAsync(string adapterId, string localDir, CancellationToken cancellationToken = default)
    {
        if (!await IsRegisteredAsync(adapterId, cancellationToken).ConfigureAwait(false))
            throw new AdapterNotFoundException(adapterId);
        var files = await DownloadPrefixAsync(CachePrefix(adapterId), localDir, cancellationToken).ConfigureAwait(false);
        if (!files.ContainsKey(CacheIndexFileName))
            throw new InvalidDataException($"The cache of adapter '{adapterId}' has no {CacheIndexFileName}.");
    }

    /// <summary>
    /// Uploads a replacement set (a gradient-cache folder) as <c>adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;/</c>,
    /// <c>cache.json</c> last, and returns its replacements URI
    /// <c>eraser:adapters/&lt;adapterId&gt;/replacements/&lt;name&gt;</c> (see
    /// <see cref="RequestValidation.FormatReplacementsUri"/>). Use a fresh name per upload
    /// (<see cref="NewReplacementName"/>). Throws <see cref="AdapterNotFoundException"/>, or
    /// <see cref="ReplacementsExistException"/> if a complete set of that name exists; leftovers of an
    /// interrupted upload of the same name (no <c>cache.json</c>) are replaced.
    /// </summary>
    public async Task<string> UploadReplacementsAsync(string adapterId, string name, string localCacheDir, CancellationToken cancellationToken = default)
    {
        string prefix = ReplacementsPrefix(adapterId, name);
        var files = await ListLocalFilesAsync(localCacheDir, cancellationToken).ConfigureAwait(false);
        var index = Require(files, CacheIndexFileName, localCacheDir);
        if (!await IsRegisteredAsync(adapterId, cancellationToken).ConfigureAwait(false))
            throw new AdapterNotFoundException(adapterId);
        if (await Blobs.GetPropertiesAsync(prefix + CacheIndexFileName, cancellationToken).ConfigureAwait(false) is not null)
            throw new ReplacementsExistException(adapterId, name);
        foreach (var file in files.Where(f => f.RelativePath != CacheIndexFileName))
            await PutReplacingLeftoverAsync(prefix + file.RelativePath, file, e => new ReplacementsExistException(adapterId, name, e), cancellationToken).ConfigureAwait(false);
        try
        {
            await UploadFileAsync(prefix + CacheIndexFileName, index, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
        }
        catch (BlobConditionFailedException e)
        {
            throw new ReplacementsExistException(adapterId, name, e);
        }
        return RequestValidation.FormatReplacementsUri(adapterId, name);
    }

    /// <summary>
    /// Downloads the replacement set named by <paramref name="replacementsUri"/> into <paramref name="localDir"/>.
    /// Throws <see cref="ArgumentException"/> if the URI is malformed or names another adapter than
    /// <paramref name="adapterId"/>, <see cref="ReplacementsNotFoundException"/> if the set is missing or incomplete.
    /// </summary>
    public async Task DownloadReplacementsAsync(string adapterId, string replacementsUri, string localDir, CancellationToken cancellationToken = default)
    {
        CheckAdapterId(adapterId);
        if (!RequestValidation.TryParseReplacementsUri(replacementsUri, out string uriAdapter, out string name))
            throw new ArgumentException($"'{replacementsUri}' is not a replacements URI ({RequestValidation.ReplacementsUriPrefix}<adapterId>{RequestValidation.ReplacementsUriInfix}<name>).", nameof(replacementsUri));
        if (uriAdapter != adapterId)
            throw new ArgumentException($"Replacements URI '{replacementsUri}' belongs to adapter '{uriAdapter}', not '{adapterId}'.", nameof(replacementsUri));
        string prefix = ReplacementsPrefix(adapterId, name);
        if (await Blobs.GetPropertiesAsync(prefix + CacheIndexFileName, cancellationToken).ConfigureAwait(false) is null)
            throw new ReplacementsNotFoundException(adapterId, replacementsUri);
        await DownloadPrefixAsync(prefix, localDir, cancellationToken).ConfigureAwait(false);
    }

    // ------------------------------------------------------------------------------------------ claims

    private sealed record Claim(string AdapterId, int Version, string Name, string Fingerprint, string ETag);

    private async Task<Claim> AcquireClaimAsync(string adapterId, int version, string fingerprint, CancellationToken cancellationToken)
    {
        string name = ClaimName(adapterId, version);
        for (int attempt = 0; ; attempt++)
        {
            var now = _time.GetUtcNow();
            var body = new JsonObject
            {
                ["adapterId"] = adapterId,
                ["version"] = version,
                ["writerId"] = WriterId,
                ["fingerprint"] = fingerprint,
                ["claimedAt"] = now,
                ["expiresAt"] = now + _claimTimeout,
            };
            try
            {
                string etag = await UploadJsonAsync(name, body, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
                return new Claim(adapterId, version, name, fingerprint, etag);
            }
            catch (BlobConditionFailedException)
            {
            }

            var (existing, existingETag) = await ReadJsonAsync(name, cancellationToken).ConfigureAwait(false);
            if (existing is null)
            {
                if (attempt < 5)
                    continue; // released meanwhile
                throw Conflict(adapterId, version, "its claim keeps changing");
            }
            string? otherWriter = (string?)existing["writerId"];
            string? otherFingerprint = (string?)existing["fingerprint"];
            DateTimeOffset expiresAt = DateTimeOffset.MinValue;
            try
            {
                expiresAt = existing["expiresAt"]?.GetValue<DateTimeOffset>() ?? DateTimeOffset.MinValue;
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                // A malformed claim counts as expired.
            }
            bool takeOver = otherWriter == WriterId || otherFingerprint == fingerprint || expiresAt <= now;
            if (!takeOver)
                throw Conflict(adapterId, version, $"writer '{otherWriter}' claimed it until {expiresAt:O}");
            try
            {
                string etag = await UploadJsonAsync(name, body, BlobCondition.IfMatch(existingETag!), cancellationToken).ConfigureAwait(false);
                if (otherFingerprint != fingerprint)
                    _logger.LogWarning("Took over the claim on version {Version} of adapter {AdapterId} from writer {OtherWriter} (expired {ExpiresAt:O})", version, adapterId, otherWriter, expiresAt);
                return new Claim(adapterId, version, name, fingerprint, etag);
            }
            catch (BlobConditionFailedException) when (attempt < 5)
            {
                // Changed meanwhile (released or taken): look again.
            }
            catch (BlobConditionFailedException e)
            {
                throw Conflict(adapterId, version, "its claim keeps changing", e);
            }
        }
    }

    private async Task EnsureClaimHeldAsync(Claim claim, CancellationToken cancellationToken)
    {
        var (current, etag) = await ReadJsonAsync(claim.Name, cancellationToken).ConfigureAwait(false);
        if (current is null)
            throw Conflict(claim.AdapterId, claim.Version, "our claim was removed by another writer");
        if (etag != claim.ETag && (string?)current["fingerprint"] != claim.Fingerprint)
            throw Conflict(claim.AdapterId, claim.Version, $"writer '{(string?)current["writerId"]}' took our claim over");
    }

    private async Task ReleaseClaimAsync(Claim claim, bool completed)
    {
        try
        {
            var props = await Blobs.GetPropertiesAsync(claim.Name, CancellationToken.None).ConfigureAwait(false);
            if (props is not null && (props.ETag == claim.ETag || completed))
                await Blobs.DeleteAsync(claim.Name, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _logger.LogWarning(e, "Could not release the claim {Claim}; it expires by itself", claim.Name);
        }
    }

    private static VersionConflictException Conflict(string adapterId, int version, string detail, Exception? inner = null) =>
        new(adapterId, version, detail, inner);

    // ------------------------------------------------------------------------------------------ helpers

    private sealed record LocalFile(string RelativePath, string? FullPath, byte[]? Bytes, long Length, string Sha256)
    {
        public static LocalFile FromBytes(string relativePath, byte[] bytes) =>
            new(relativePath, null, bytes, bytes.Length, Convert.ToHexStringLower(SHA256.HashData(bytes)));

        public Stream Open() => Bytes is not null
            ? new MemoryStream(Bytes, writable: false)
            : new FileStream(FullPath!, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
    }

    private static async Task<List<LocalFile>> ListLocalFilesAsync(string dir, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(dir);
        string root = Path.GetFullPath(dir);
        if (!Directory.Exists(root))
            throw new DirectoryNotFoundException($"Folder '{dir}' does not exist.");
        var result = new List<LocalFile>();
        foreach (var path in Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }))
        {
            string relative = Path.GetRelativePath(root, path).Replace(Path.DirectorySeparatorChar, '/');
            if (!relative.Split('/').All(s => LocalFileNameRegex().IsMatch(s)))
                throw new ArgumentException($"File '{relative}' in '{dir}' has a name that cannot be stored (each path segment must match {LocalFileNamePattern}).", nameof(dir));
            var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
            await using (stream.ConfigureAwait(false))
            {
                byte[] hash = await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false);
                result.Add(new LocalFile(relative, path, null, stream.Length, Convert.ToHexStringLower(hash)));
            }
        }
        result.Sort((a, b) => string.CompareOrdinal(a.RelativePath, b.RelativePath));
        return result;
    }

    private static LocalFile Require(List<LocalFile> files, string relativePath, string dir) =>
        files.FirstOrDefault(f => f.RelativePath == relativePath)
        ?? throw new ArgumentException($"Folder '{dir}' has no {relativePath}.", nameof(dir));

    private static void CheckManifestFiles(LocalFile manifestFile, List<LocalFile> files, string dir)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(File.ReadAllBytes(manifestFile.FullPath!));
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"{ManifestFileName} in '{dir}' is not valid JSON: {e.Message}", nameof(dir), e);
        }
        if (node is not JsonObject manifest)
            throw new ArgumentException($"{ManifestFileName} in '{dir}' is not a JSON object.", nameof(dir));
        foreach (var file in files.Where(f => f.RelativePath != ManifestFileName))
        {
            string? expected = ManifestSha256(manifest, file.RelativePath);
            if (expected is not null && !string.Equals(expected, file.Sha256, StringComparison.OrdinalIgnoreCase))
                throw new ArgumentException($"{ManifestFileName} in '{dir}' lists SHA-256 {expected} for {file.RelativePath}, but the file's is {file.Sha256}.", nameof(dir));
        }
        if (manifest["files"] is JsonObject listed)
        {
            foreach (var (name, _) in listed)
            {
                if (name != ManifestFileName && files.All(f => f.RelativePath != name))
                    throw new ArgumentException($"{ManifestFileName} in '{dir}' lists {name}, which is not in the folder.", nameof(dir));
            }
        }
    }

    /// <summary>The SHA-256 a manifest records for a file: <c>files.&lt;name&gt;.sha256</c> (or <c>files.&lt;name&gt;</c> as a string).</summary>
    private static string? ManifestSha256(JsonObject manifest, string file) =>
        manifest["files"] is JsonObject files
            ? files[file] switch
            {
                JsonObject o when o["sha256"] is JsonValue v && v.TryGetValue(out string? s) => s,
                JsonValue v when v.TryGetValue(out string? s) => s,
                _ => null,
            }
            : null;

    private static JsonObject FilesNode(IEnumerable<LocalFile> files)
    {
        var node = new JsonObject();
        foreach (var f in files)
            node[f.RelativePath] = new JsonObject { ["sha256"] = f.Sha256, ["bytes"] = f.Length };
        return node;
    }

    private static string Fingerprint(IEnumerable<(string Path, string Sha256)> files)
    {
        var sb = new StringBuilder();
        foreach (var (path, sha) in files.OrderBy(f => f.Path, StringComparer.Ordinal))
            sb.Append(path).Append(':').Append(sha).Append('\n');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }

    /// <summary>Creates a blob with If-None-Match; if a leftover exists, replaces exactly that leftover
    /// (If-Match on its ETag). Another change in between throws <paramref name="conflict"/>.</summary>
    private async Task PutReplacingLeftoverAsync(string name, LocalFile file, Func<Exception?, Exception> conflict, CancellationToken cancellationToken)
    {
        for (int attempt = 0; attempt < 3; attempt++)
        {
            try
            {
                await UploadFileAsync(name, file, BlobCondition.CreateOnly, cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (BlobConditionFailedException)
            {
            }
            var existing = await Blobs.GetPropertiesAsync(name, cancellationToken).ConfigureAwait(false);
            if (existing is null)
                continue;
            try
            {
                await UploadFileAsync(name, file, BlobCondition.IfMatch(existing.ETag), cancellationToken).ConfigureAwait(false);
                _logger.LogInformation("Replaced leftover blob {Blob} of an interrupted write", name);
                return;
            }
            catch (BlobConditionFailedException e)
            {
                throw conflict(e);
            }
        }
        throw conflict(null);
    }

    private async Task<string> UploadFileAsync(string name, LocalFile file, BlobCondition condition, CancellationToken cancellationToken)
    {
        var stream = file.Open();
        await using (stream.ConfigureAwait(false))
            return await Blobs.UploadAsync(name, stream, condition, cancellationToken).ConfigureAwait(false);
    }

    private async Task<string> UploadJsonAsync(string name, JsonNode node, BlobCondition condition, CancellationToken cancellationToken)
    {
        using var stream = new MemoryStream(JsonBytes(node), writable: false);
        return await Blobs.UploadAsync(name, stream, condition, cancellationToken).ConfigureAwait(false);
    }

    private async Task<(JsonNode? Node, string? ETag)> ReadJsonAsync(string name, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        var download = await Blobs.DownloadAsync(name, buffer, cancellationToken).ConfigureAwait(false);
        if (download is null)
            return (null, null);
        try
        {
            return (JsonNode.Parse(buffer.ToArray()), download.ETag);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Blob '{name}' is not valid JSON.", e);
        }
    }

    private static byte[] JsonBytes(JsonNode node) => JsonSerializer.SerializeToUtf8Bytes(node, JsonOptions);

    private JsonObject HeadJson(string adapterId, int version) => new()
    {
        ["adapterId"] = adapterId,
        ["version"] = version,
        ["updatedAt"] = _time.GetUtcNow(),
    };

    /// <summary>Downloads every blob under <paramref name="prefix"/> into <paramref name="localDir"/>; returns
    /// relative path → SHA-256.</summary>
    private async Task<Dictionary<string, string>> DownloadPrefixAsync(string prefix, string localDir, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(localDir);
        string root = Path.GetFullPath(localDir);
        Directory.CreateDirectory(root);
        var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
        await foreach (var name in Blobs.ListAsync(prefix, cancellationToken).ConfigureAwait(false))
        {
            string relative = name[prefix.Length..];
            if (!relative.Split('/').All(s => LocalFileNameRegex().IsMatch(s)))
                throw new InvalidDataException($"Blob '{name}' has a name that cannot be a local file name.");
            string target = Path.Combine(root, relative.Replace('/', Path.DirectorySeparatorChar));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            string temp = target + ".part-" + Guid.NewGuid().ToString("N");
            try
            {
                string sha;
                var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
                await using (file.ConfigureAwait(false))
                {
                    using var hasher = new HashingStream(file);
                    if (await Blobs.DownloadAsync(name, hasher, cancellationToken).ConfigureAwait(false) is null)
                        throw new InvalidDataException($"Blob '{name}' disappeared while it was downloaded.");
                    sha = hasher.HexHash();
                }
                File.Move(temp, target, overwrite: true);
                hashes[relative] = sha;
            }
            finally
            {
                if (File.Exists(temp))
                    File.Delete(temp);
            }
        }
        return hashes;
    }

    private static void CheckAdapterId(string adapterId)
    {
        if (!RequestValidation.IsValidAdapterId(adapterId))
            throw new ArgumentException($"Invalid adapter id '{adapterId}': expected 1–{RequestValidation.MaxAdapterIdLength} characters of [a-z0-9._-] in '/'-separated segments, none empty, '.' or '..'.", nameof(adapterId));
        if (!IsStorableAdapterId(adapterId))
            throw new ArgumentException($"Adapter id '{adapterId}' uses a reserved segment name ({string.Join(", ", ReservedSegments)}) after its first segment.", nameof(adapterId));
    }

    private static void CheckVersion(int version, int min)
    {
        if (version < min || version > MaxVersion)
            throw new ArgumentOutOfRangeException(nameof(version), version, $"Version must be between {min} and {MaxVersion}.");
    }

    /// <summary>Write-only pass-through that hashes what goes through (SHA-256).</summary>
    private sealed class HashingStream(Stream inner) : Stream
    {
        private readonly IncrementalHash _sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public string HexHash() => Convert.ToHexStringLower(_sha.GetHashAndReset());

        public override void Write(byte[] buffer, int offset, int count)
        {
            _sha.AppendData(buffer, offset, count);
            inner.Write(buffer, offset, count);
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            _sha.AppendData(buffer);
            inner.Write(buffer);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            _sha.AppendData(buffer.Span);
            return inner.WriteAsync(buffer, cancellationToken);
        }

        public override void Flush() => inner.Flush();

        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                _sha.Dispose();
            base.Dispose(disposing);
        }
    }
}
