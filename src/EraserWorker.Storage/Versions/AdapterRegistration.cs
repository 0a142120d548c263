using EraserWorker.Contracts;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Layout;
using EraserWorker.Storage.Manifests;
using EraserWorker.Storage.Transfers;

namespace EraserWorker.Storage.Versions;

/// <summary>The local folders of a registration. The caller has validated them (the CLI's <c>adapters register</c>); the
/// store only checks the files it needs are there and uploads exactly what the folders hold.</summary>
/// <param name="AdapterDirectory"><c>adapter_config.json</c> and <c>adapter_model.safetensors</c>.</param>
/// <param name="CacheDirectory">The gradient cache (<c>cache.json</c> and the files it lists).</param>
/// <param name="ModelDirectory">Optional: the base model (<c>config.json</c>, weights, tokenizer).</param>
/// <param name="TrainingFile">Optional: the training texts, one JSONL file whose ids are the cache's (see
/// <see cref="TrainingTexts"/>); the caller has validated it.</param>
public sealed record RegistrationFiles(string AdapterDirectory, string CacheDirectory, string? ModelDirectory = null, string? TrainingFile = null);

/// <summary>
/// Registers an adapter as version 0: under the claim on version 0, uploads the gradient cache (<c>cache.json</c> last), the
/// optional model and training texts, the adapter files, then the base manifest written by the store, then creates the head
/// with If-None-Match. Nothing is visible before the head exists, so a registration interrupted by a crash can simply be run
/// again (it replaces the leftovers); a concurrent registration with different files gets
/// <see cref="VersionConflictException"/> (version 0).
/// </summary>
internal sealed class AdapterRegistration(StoreContext context, HeadStore heads, VersionClaims claims, TrainingTexts training)
{
    /// <summary>The file of a registered model that must be present (the Hugging Face model configuration).</summary>
    public const string ModelConfigFileName = "config.json";

    public async Task<AdapterVersionRef> RegisterAsync(string adapterId, RegistrationFiles local, CancellationToken cancellationToken)
    {
        BlobLayout.CheckAdapterId(adapterId);
        var adapterFiles = await LocalFiles.ListAsync(local.AdapterDirectory, cancellationToken).ConfigureAwait(false);
        var cacheFiles = await LocalFiles.ListAsync(local.CacheDirectory, cancellationToken).ConfigureAwait(false);
        var modelFiles = local.ModelDirectory is null ? null : await LocalFiles.ListAsync(local.ModelDirectory, cancellationToken).ConfigureAwait(false);
        var trainingFile = local.TrainingFile is null ? null : await LocalFiles.OneAsync(local.TrainingFile, cancellationToken).ConfigureAwait(false);
        if (modelFiles is not null)
            LocalFiles.Require(modelFiles, ModelConfigFileName, local.ModelDirectory!);
        var weights = LocalFiles.Require(adapterFiles, StoredFileNames.AdapterWeights, local.AdapterDirectory);
        LocalFiles.Require(adapterFiles, StoredFileNames.AdapterConfig, local.AdapterDirectory);
        var cacheIndex = LocalFiles.Require(cacheFiles, StoredFileNames.CacheIndex, local.CacheDirectory);
        if (adapterFiles.Any(f => f.RelativePath == StoredFileNames.Manifest))
            throw new ArgumentException($"The adapter folder '{local.AdapterDirectory}' must not contain {StoredFileNames.Manifest}: the store writes the base version's manifest.", nameof(local));
        if (await heads.ExistsAsync(adapterId, cancellationToken).ConfigureAwait(false))
            throw new AdapterAlreadyRegisteredException(adapterId);

        string fingerprint = LocalFiles.Fingerprint(adapterFiles.Select(f => ("version/" + f.RelativePath, f.Sha256))
            .Concat(cacheFiles.Select(f => ("cache/" + f.RelativePath, f.Sha256)))
            .Concat((modelFiles ?? []).Select(f => ("model/" + f.RelativePath, f.Sha256)))
            .Concat(trainingFile is null ? [] : [("training/" + trainingFile.Sha256, trainingFile.Sha256)]));
        var claim = await claims.AcquireAsync(adapterId, 0, fingerprint, cancellationToken).ConfigureAwait(false);
        bool done = false;
        try
        {
            await UploadAllAsync(adapterId, BlobLayout.Cache(adapterId), cacheFiles.Where(f => f != cacheIndex).Append(cacheIndex), "a cache file", cancellationToken).ConfigureAwait(false);
            if (modelFiles is not null)
                await UploadAllAsync(adapterId, BlobLayout.Model(adapterId), modelFiles, "a model file", cancellationToken).ConfigureAwait(false);
            ManifestFile? trainingDigest = null;
            if (trainingFile is not null)
                trainingDigest = await training.RegisterAsync(adapterId, trainingFile,
                    e => VersionClaims.Conflict(adapterId, 0, "the training texts changed during registration", e), cancellationToken).ConfigureAwait(false);
            string versionPrefix = BlobLayout.Version(adapterId, 0);
            await UploadAllAsync(adapterId, versionPrefix, adapterFiles, "a version-0 file", cancellationToken).ConfigureAwait(false);

            var manifest = new AdapterManifest
            {
                AdapterId = adapterId,
                Version = 0,
                ParentVersion = null,
                Kind = AdapterManifest.BaseKind,
                CreatedAt = context.Time.GetUtcNow(),
                WriterId = context.WriterId,
                Files = LocalFiles.Digests(adapterFiles),
                CacheFiles = LocalFiles.Digests(cacheFiles),
                ModelFiles = modelFiles is null ? null : LocalFiles.Digests(modelFiles),
                TrainingFiles = trainingDigest is null ? null : new Dictionary<string, ManifestFile> { [trainingFile!.RelativePath] = trainingDigest },
            };
            await claims.EnsureHeldAsync(claim, cancellationToken).ConfigureAwait(false);
            // The base manifest is not visible before the head exists: a leftover one is replaced.
            await context.PutReplacingLeftoverAsync(versionPrefix + StoredFileNames.Manifest, LocalFile.FromBytes(StoredFileNames.Manifest, manifest.ToUtf8Json()),
                e => VersionClaims.Conflict(adapterId, 0, "the base manifest changed during registration", e), cancellationToken).ConfigureAwait(false);
            try
            {
                await heads.CreateAsync(adapterId, cancellationToken).ConfigureAwait(false);
            }
            catch (BlobConditionFailedException e)
            {
                throw new AdapterAlreadyRegisteredException(adapterId, e);
            }
            done = true;
            return new AdapterVersionRef(adapterId, 0, context.Blobs.UriFor(versionPrefix), weights.Sha256);
        }
        finally
        {
            await claims.ReleaseAsync(claim, done).ConfigureAwait(false);
        }
    }

    private async Task UploadAllAsync(string adapterId, string prefix, IEnumerable<LocalFile> files, string what, CancellationToken cancellationToken)
    {
        foreach (var file in files)
            await context.PutReplacingLeftoverAsync(prefix + file.RelativePath, file,
                e => VersionClaims.Conflict(adapterId, 0, $"{what} changed during registration", e), cancellationToken).ConfigureAwait(false);
    }
}
