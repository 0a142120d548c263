using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Components.Observability;
using EraserWorker.Components.Warm;
using EraserWorker.Models;
using EraserWorker.Storage;

namespace EraserWorker.Components.Unlearning;

/// <summary>
/// Turns the text <c>replacements</c> of a <c>modifyQuery</c> / <c>correctResponse</c> request into a SPEC §2
/// replacement set in the store, after which the request is handled exactly as one with that <c>replacementsUri</c>.
/// <para>
/// The rows follow the definition of the adapter's gradient cache (<c>eraser cache build</c>): each text is tokenised
/// with the registered tokenizer as training data is (<see cref="TrainingData.ParseLine"/>: <c>[BOS] + prompt</c>,
/// <c>response + [EOS]</c>); gᵢ' is the gradient of the mean response-token cross-entropy at θ₀ (version 0, the
/// adapter the cache was built at) and, when the cache has curvature rows, cᵢ' is the sampled-label row drawn with
/// <see cref="LoraRuntime.SampleSeed"/>(the cache's seed, id) — with the cache's parameters, l2 and storage dtype.
/// </para>
/// <para>
/// The set is written under a name derived from the request id and a hash of the texts,
/// <c>replacements/req-&lt;request id, sanitised&gt;-&lt;16 hex&gt;</c>, with <c>cache.json</c> last: a redelivery, a
/// recomputation after a head conflict or another replica finds the complete set and reuses it; an interrupted upload
/// leaves no <c>cache.json</c> and is completed by the next attempt. The set is durable like an uploaded one, so every
/// later version (computed from the base with the cumulative edits) replays it.
/// </para>
/// </summary>
public sealed class TextReplacementSets(AdapterStore store, WarmModels models, ILogger<TextReplacementSets> logger)
{
    /// <summary>The <c>producer</c> recorded in the sets' <c>cache.json</c>.</summary>
    public const string Producer = "EraserWorker text replacements";

    // GradientCacheBuilder's defaults: most samples and padded tokens per forward/backward pass.
    private const int BatchSize = 16;
    private const int BatchTokens = 8192;

    /// <summary>
    /// The request unchanged when it has no text replacements; else the same request with the <c>replacementsUri</c>
    /// of its stored set (computed now, or found complete) and no texts — or the request's failure: the adapter has no
    /// registered model or tokenizer, or a text does not tokenise into a usable sample (<c>InvalidRequest</c>); a sample
    /// id is not in the cache (<c>UnknownSample</c>); the stored model does not fit the cache (<c>InvalidCache</c>);
    /// non-finite rows (<c>NumericalFailure</c>). Storage trouble propagates (the batch is retried).
    /// </summary>
    public async Task<(UnlearningRequested Request, UnlearningFailed? Failure)> ResolveAsync(WarmAdapter warm, UnlearningRequested request,
        CancellationToken cancellation)
    {
        if (request.Replacements is null)
            return (request, null);
        var cache = warm.Engine.Cache;
        var unknown = request.SampleIds.Where(id => !cache.TryGetRow(id, out _)).Take(5).ToList();
        if (unknown.Count > 0)
            return Fail(request, FailureCodes.UnknownSample, $"Not in the adapter's gradient cache: {string.Join(", ", unknown.Select(Quote))}.");

        string name = SetName(request);
        string uri = RequestValidation.FormatReplacementsUri(warm.AdapterId, name);
        var resolved = request with { ReplacementsUri = uri, Replacements = null };
        if (warm.TryGetReplacements(uri, out _) || await IsCompleteAsync(warm.AdapterId, name, cancellation))
            return (resolved, null); // computed before: by an earlier attempt, a redelivery or another replica

        try
        {
            var model = await models.GetAsync(warm.AdapterId, cancellation);
            if (model is null)
                return Fail(request, FailureCodes.InvalidRequest,
                    $"Adapter '{warm.AdapterId}' is not registered with its base model, so text replacements cannot be used: register it with 'eraser adapters register --model MODEL_DIR', or upload a replacement set ('eraser replacements upload') and give its replacementsUri.");
            if (model.Tokenizer is null)
                return Fail(request, FailureCodes.InvalidRequest,
                    $"The model registered with adapter '{warm.AdapterId}' has no tokenizer (tokenizer.json or tokenizer.model), so text replacements cannot be used; give a replacementsUri.");
            if (Definition(cache, model) is not { } definition)
                return Fail(request, FailureCodes.InvalidCache, DefinitionProblem(cache, model)!);

            var samples = new List<TokenizedSample>(request.Replacements.Count);
            for (int i = 0; i < request.Replacements.Count; i++)
            {
                var r = request.Replacements[i];
                string line = new JsonObject { ["id"] = r.Id, ["prompt"] = r.Prompt, ["response"] = r.Response }.ToJsonString();
                try
                {
                    samples.Add(TrainingData.ParseLine(line, $"replacements[{i}]", model.Model.Config.VocabSize, model.Tokenizer));
                }
                catch (InvalidDataException e)
                {
                    return Fail(request, FailureCodes.InvalidRequest, $"Text replacement cannot be used: {e.Message}");
                }
            }

            string local = Path.Combine(warm.Directory, "replacements", Guid.NewGuid().ToString("N"));
            var watch = Stopwatch.StartNew();
            await model.Gate.WaitAsync(cancellation);
            try
            {
                WriteSet(local, cache, model, samples, definition, request, cancellation);
            }
            catch (ArgumentException e) when (!Directory.Exists(local))
            {
                // GradientCacheWriter.Append refuses non-finite (or, for F16/BF16, overflowing) values.
                return Fail(request, FailureCodes.NumericalFailure, $"The rows of the text replacements are not finite: {e.Message}");
            }
            finally
            {
                model.Gate.Release();
            }
            double computeSeconds = watch.Elapsed.TotalSeconds;

            bool ours;
            try
            {
                await store.UploadReplacementsAsync(warm.AdapterId, name, local, cancellation);
                ours = true;
            }
            catch (ReplacementsExistException)
            {
                // Another replica completed the same set first: use the stored one (ReplacementSetLoader downloads it). A set still
                // incomplete here is being written by someone else: transient, the batch is retried.
                if (!await IsCompleteAsync(warm.AdapterId, name, cancellation))
                    throw;
                ours = false;
            }
            if (ours)
                warm.AddReplacements(uri, GradientCache.Open(local)); // the very files now in the store
            else
                LocalFolder.TryDelete(local);
            logger.LogInformation("Computed {Count} replacement row(s) from text for request {RequestId} of {AdapterId} in {Seconds:F2} s; stored as {Uri}{Reused}",
                samples.Count, LogText.Safe(request.RequestId), warm.AdapterId, computeSeconds, uri, ours ? "" : " (another writer's identical set reused)");
            return (resolved, null);
        }
        catch (Exception e) when (e is InvalidDataException or GradientCacheException or FileNotFoundException)
        {
            logger.LogError(e, "Text replacements of request {RequestId} for {AdapterId} cannot be computed", LogText.Safe(request.RequestId), warm.AdapterId);
            return Fail(request, FailureCodes.InvalidCache, $"The model registered with adapter '{warm.AdapterId}' cannot compute replacement rows: {e.Message}");
        }
    }

    /// <summary>The set's name: <c>req-</c>, the request id lowercased with characters outside <c>[a-z0-9._-]</c> turned
    /// into <c>-</c> (at most 64), <c>-</c>, and 16 hex digits of the SHA-256 of the request id, task and texts. The same
    /// request gives the same name; the same id with other texts does not.</summary>
    public static string SetName(UnlearningRequested request)
    {
        ArgumentNullException.ThrowIfNull(request.Replacements);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var length = new byte[4];
        void Add(string? text)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(text ?? "");
            BinaryPrimitives.WriteInt32LittleEndian(length, bytes.Length);
            hash.AppendData(length);
            hash.AppendData(bytes);
        }
        Add(request.RequestId);
        Add(request.Task);
        foreach (var r in request.Replacements)
        {
            Add(r.Id);
            Add(r.Prompt);
            Add(r.Response);
        }
        string hex = Convert.ToHexStringLower(hash.GetHashAndReset())[..16];
        var readable = new StringBuilder();
        foreach (char c in request.RequestId.ToLowerInvariant())
        {
            if (readable.Length == 64)
                break;
            readable.Append(c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '.' or '_' or '-' ? c : '-');
        }
        return $"req-{readable}-{hex}";
    }

    /// <summary>How the cache's rows were made, when the registered model can make rows like them: curvature rows or
    /// not, and the seed of the sampled labels. Null when the model does not fit the cache.</summary>
    private static (bool Curvature, ulong Seed)? Definition(GradientCache cache, WarmModel model) =>
        DefinitionProblem(cache, model) is null ? (cache.HasCurvature, CacheDefinition.Seed(cache.Manifest) ?? 0) : null;

    private static string? DefinitionProblem(GradientCache cache, WarmModel model) =>
        CacheDefinition.Problem(cache.Manifest, cache.HasCurvature, model.Runtime.Layout.Parameters, model.BaseAdapterSha256);

    /// <summary>Computes the rows (samples in input-length order, batched like <c>eraser cache build</c>) and writes the
    /// set atomically into <paramref name="directory"/> (one shard).</summary>
    private static void WriteSet(string directory, GradientCache cache, WarmModel model, List<TokenizedSample> samples,
        (bool Curvature, ulong Seed) definition, UnlearningRequested request, CancellationToken cancellation)
    {
        var ordered = samples.OrderBy(s => s.InputLength).ToList();
        var extra = new JsonObject
        {
            ["producer"] = Producer,
            ["requestId"] = request.RequestId,
            ["task"] = request.Task,
            ["adapterSha256"] = model.BaseAdapterSha256,
            ["loss"] = "per sample: mean token cross-entropy of the response tokens, each predicted from everything before it (text tokenised with the registered tokenizer: [BOS] + prompt, response + [EOS])",
            ["curvature"] = definition.Curvature ? "sampled, as the adapter's gradient cache" : "none (consumers use cᵢ = gᵢ)",
            ["seed"] = definition.Seed,
            ["samples"] = ordered.Count,
        };
        using var writer = GradientCacheWriter.Create(directory, cache.Parameters, cache.L2, cache.StorageDType, definition.Curvature, ordered.Count, extra);
        foreach (var batch in Batches(ordered))
        {
            cancellation.ThrowIfCancellationRequested();
            var rows = model.Runtime.PerSample(batch, model.Theta0, definition.Curvature, definition.Seed);
            for (int k = 0; k < batch.Count; k++)
                writer.Append(batch[k].Id, rows.Gradient(k), rows.CurvatureRow(k));
        }
        writer.Complete();
    }

    private static IEnumerable<List<TokenizedSample>> Batches(List<TokenizedSample> ordered)
    {
        var current = new List<TokenizedSample>();
        int longest = 0;
        foreach (var s in ordered)
        {
            int newLongest = Math.Max(longest, s.InputLength);
            if (current.Count > 0 && (current.Count + 1 > BatchSize || (long)newLongest * (current.Count + 1) > BatchTokens))
            {
                yield return current;
                current = [];
                newLongest = s.InputLength;
            }
            current.Add(s);
            longest = newLongest;
        }
        if (current.Count > 0)
            yield return current;
    }

    private Task<bool> IsCompleteAsync(string adapterId, string name, CancellationToken cancellation) =>
        store.ReplacementSetExistsAsync(adapterId, name, cancellation);

    private static (UnlearningRequested, UnlearningFailed?) Fail(UnlearningRequested request, string code, string message) =>
        (request, Failures.Of(request, code, message));

    private static string Quote(string id) => Failures.Quote(id);
}
