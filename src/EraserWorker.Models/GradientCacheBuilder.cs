using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Models;

public enum CurvatureMode
{
    /// <summary>Curvature rows from labels sampled from the model's own predictions (Fisher / Gauss–Newton).</summary>
    Sampled,
    /// <summary>No curvature rows: consumers use cᵢ = gᵢ (empirical Fisher).</summary>
    None,
}

/// <summary>Settings of <see cref="GradientCacheBuilder.Build"/>.</summary>
public sealed record CacheBuildOptions
{
    public required string ModelDirectory { get; init; }
    public required string AdapterDirectory { get; init; }
    public required string DataFile { get; init; }
    public required string OutputDirectory { get; init; }
    /// <summary>The objective's L2 weight in SPEC §1's sum convention: L(θ) = Σᵢ ℓᵢ(θ) + (l2/2)‖θ‖².</summary>
    public double L2 { get; init; }
    public CurvatureMode Curvature { get; init; } = CurvatureMode.Sampled;
    /// <summary>Storage dtype of the rows: F32, F16 or BF16.</summary>
    public string DType { get; init; } = DTypeConversion.F32;
    /// <summary>Most samples per forward/backward pass.</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Most padded tokens (batch × longest input) per pass; long samples go in smaller batches.</summary>
    public int BatchTokens { get; init; } = 8192;
    /// <summary>Rows per shard; a shard is also the unit of resumption.</summary>
    public int RowsPerShard { get; init; } = 1024;
    /// <summary>Seed of the sampled labels (each sample's draws depend only on this and its id).</summary>
    public ulong Seed { get; init; } = 1;
    public string Device { get; init; } = "auto";
    public ComputePrecision Precision { get; init; } = ComputePrecision.Float32;
}

/// <summary>Progress of a cache build: samples and tokens done, of the total, and the time so far.</summary>
public sealed record CacheBuildProgress(int SamplesDone, int SamplesTotal, long TokensDone, long TokensTotal, TimeSpan Elapsed, int ResumedSamples, long ResumedTokens = 0);

/// <summary>What a cache build did.</summary>
public sealed record CacheBuildResult(
    string OutputDirectory, int Samples, long Parameters, long ResponseTokens, long InputTokens, int ResumedSamples,
    double Seconds, double ComputeSeconds, RuntimeTimings Timings, double MeanLoss, string Device, long ModelBytes);

/// <summary>
/// Builds an <c>eraser.gradcache/v1</c> gradient cache (SPEC §2) for a LLaMA model + PEFT LoRA adapter + JSONL data:
/// per-sample gradients gᵢ = ∇ℓᵢ(θ₀) and, with <see cref="CurvatureMode.Sampled"/>, curvature rows cᵢ, in file order,
/// with the adapter's PEFT keys as <c>parameters</c> and <c>l2</c> as given.
/// </summary>
/// <remarks>
/// Resumable: shards are completed one at a time in <c>OUT.partial/</c> (each an atomic, self-contained cache of
/// <see cref="CacheBuildOptions.RowsPerShard"/> rows) with a fingerprint of the inputs and settings; a rerun with the
/// same inputs skips the finished shards. At the end the shards are moved into a temporary sibling of OUT,
/// <c>cache.json</c> is written, the folder is renamed to OUT and opened with <see cref="GradientCache.Open"/> as a
/// check; then <c>OUT.partial/</c> is deleted.
/// </remarks>
public static class GradientCacheBuilder
{
    public const string Producer = "eraser cache build (EraserWorker.Models)";

    public static CacheBuildResult Build(CacheBuildOptions options, IProgress<CacheBuildProgress>? progress = null, CancellationToken cancellation = default)
    {
        var watch = Stopwatch.StartNew();
        string output = Path.GetFullPath(options.OutputDirectory.TrimEnd('/', '\\'));
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new IOException($"The output folder '{options.OutputDirectory}' exists and is not empty.");
        if (!DTypeConversion.IsStorageFloat(options.DType))
            throw new ArgumentException($"Storage dtype must be F32, F16 or BF16 (got '{options.DType}').");
        if (!(double.IsFinite(options.L2) && options.L2 >= 0))
            throw new ArgumentException($"l2 must be a finite number ≥ 0 (got {options.L2}).");
        ArgumentOutOfRangeException.ThrowIfLessThan(options.BatchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.RowsPerShard, 1);

        var config = LlamaConfig.Load(options.ModelDirectory);
        var (layout, theta) = LoraAdapterFiles.Read(options.AdapterDirectory, config);
        var tokenizer = ModelTokenizer.TryLoad(options.ModelDirectory, config);
        var samples = TrainingData.Load(options.DataFile, config.VocabSize, tokenizer);
        string adapterSha = FileHash.Sha256OfFile(Path.Combine(options.AdapterDirectory, PeftAdapter.WeightsFileName));
        string dataSha = FileHash.Sha256OfFile(options.DataFile);
        bool curvature = options.Curvature == CurvatureMode.Sampled;

        var fingerprint = new JsonObject
        {
            ["adapterSha256"] = adapterSha,
            ["dataSha256"] = dataSha,
            ["model"] = ModelFingerprint(options.ModelDirectory),
            ["l2"] = options.L2,
            ["curvature"] = curvature ? "sampled" : "none",
            ["dtype"] = options.DType,
            ["rowsPerShard"] = options.RowsPerShard,
            ["seed"] = options.Seed,
            ["precision"] = options.Precision.ToString(),
        };
        string partial = output + ".partial";
        int shardCount = (samples.Count + options.RowsPerShard - 1) / options.RowsPerShard;
        var finished = PreparePartial(partial, fingerprint, shardCount, samples, options.RowsPerShard);
        int resumed = finished.Sum(s => Math.Min(options.RowsPerShard, samples.Count - s * options.RowsPerShard));

        long tokensTotal = samples.Sum(s => (long)s.InputLength), tokensDone = 0;
        int samplesDone = 0;
        foreach (int s in finished)
        {
            var part = ShardRows(samples, s, options.RowsPerShard);
            samplesDone += part.Count;
            tokensDone += part.Sum(x => (long)x.InputLength);
        }
        long resumedTokens = tokensDone;
        progress?.Report(new CacheBuildProgress(samplesDone, samples.Count, tokensDone, tokensTotal, watch.Elapsed, resumed, resumedTokens));

        using var model = LlamaModel.Load(options.ModelDirectory, options.Precision, options.Device);
        var runtime = new LoraRuntime(model, layout);
        var parameters = layout.Parameters;
        double lossSum = 0;
        var compute = Stopwatch.StartNew();
        compute.Stop();
        for (int shard = 0; shard < shardCount; shard++)
        {
            if (finished.Contains(shard))
                continue;
            cancellation.ThrowIfCancellationRequested();
            var rows = ShardRows(samples, shard, options.RowsPerShard);
            string target = Path.Combine(partial, PartName(shard));
            using var writer = GradientCacheWriter.Create(target, parameters, options.L2, options.DType, curvature, options.RowsPerShard);
            foreach (var batch in Batches(rows, options.BatchSize, options.BatchTokens))
            {
                cancellation.ThrowIfCancellationRequested();
                compute.Start();
                var result = runtime.PerSample(batch.Select(i => rows[i]).ToList(), theta, curvature, options.Seed);
                compute.Stop();
                // Within a shard rows are in (input length, file order) order: batches of similar lengths pad little.
                for (int k = 0; k < batch.Count; k++)
                {
                    writer.Append(rows[batch[k]].Id, result.Gradient(k), result.CurvatureRow(k));
                    lossSum += result.Losses[k];
                    samplesDone++;
                    tokensDone += rows[batch[k]].InputLength;
                }
                progress?.Report(new CacheBuildProgress(samplesDone, samples.Count, tokensDone, tokensTotal, watch.Elapsed, resumed, resumedTokens));
            }
            writer.Complete();
        }

        Assemble(partial, output, shardCount, parameters, options.L2, new JsonObject
        {
            ["producer"] = Producer,
            ["adapterSha256"] = adapterSha,
            ["dataSha256"] = dataSha,
            ["model"] = Path.GetFileName(Path.GetFullPath(options.ModelDirectory).TrimEnd('/')),
            ["loss"] = "per sample: mean token cross-entropy of the response tokens, each predicted from everything before it; objective Σᵢ ℓᵢ(θ) + (l2/2)‖θ‖²",
            ["curvature"] = curvature
                ? "sampled: cᵢ = (1/√Rᵢ) Σₜ ∇CE(ŷₜ), ŷₜ ~ the model's own prediction at each of the Rᵢ response positions (E[cᵢcᵢᵀ] = Gauss–Newton/Fisher of ℓᵢ)"
                : "none (consumers use cᵢ = gᵢ)",
            ["seed"] = options.Seed,
            ["samples"] = samples.Count,
        });
        using (GradientCache.Open(output))
        {
        }
        Directory.Delete(partial, recursive: true);
        long responseTokens = samples.Sum(s => (long)s.ResponseIds.Length);
        int computed = samples.Count - resumed;
        return new CacheBuildResult(output, samples.Count, layout.ParameterCount, responseTokens, tokensTotal, resumed,
            watch.Elapsed.TotalSeconds, compute.Elapsed.TotalSeconds, runtime.Timings.Clone(), computed > 0 ? lossSum / computed : double.NaN,
            model.Device.ToString(), model.WeightBytes);
    }

    /// <summary>Consecutive runs of indices with at most <paramref name="batchSize"/> samples and
    /// <paramref name="batchTokens"/> padded tokens.</summary>
    internal static IEnumerable<List<int>> Batches(IReadOnlyList<TokenizedSample> rows, int batchSize, int batchTokens)
    {
        var current = new List<int>();
        int longest = 0;
        for (int i = 0; i < rows.Count; i++)
        {
            int length = rows[i].InputLength;
            int newLongest = Math.Max(longest, length);
            if (current.Count > 0 && (current.Count + 1 > batchSize || (long)newLongest * (current.Count + 1) > batchTokens))
            {
                yield return current;
                current = [];
                newLongest = length;
            }
            current.Add(i);
            longest = newLongest;
        }
        if (current.Count > 0)
            yield return current;
    }

    /// <summary>The samples of a shard in row order: the shard's slice of the file, stably sorted by input length.</summary>
    internal static List<TokenizedSample> ShardRows(IReadOnlyList<TokenizedSample> samples, int shard, int rowsPerShard) =>
        samples.Skip(shard * rowsPerShard).Take(rowsPerShard).OrderBy(s => s.InputLength).ToList();

    private static string PartName(int shard) => $"part-{shard:D5}";

    private const string FingerprintFile = "build.json";

    /// <summary>Creates or validates the partial folder; returns the finished shard numbers.</summary>
    private static HashSet<int> PreparePartial(string partial, JsonObject fingerprint, int shardCount, IReadOnlyList<TokenizedSample> samples, int rowsPerShard)
    {
        var finished = new HashSet<int>();
        string fingerprintPath = Path.Combine(partial, FingerprintFile);
        if (Directory.Exists(partial))
        {
            if (!File.Exists(fingerprintPath) || !JsonNode.DeepEquals(JsonNode.Parse(File.ReadAllText(fingerprintPath)), fingerprint))
                throw new IOException(
                    $"'{partial}' holds an interrupted build with other inputs or settings; delete it or rerun with the same model, adapter, data and options.");
            foreach (var dir in Directory.EnumerateDirectories(partial))
            {
                string name = Path.GetFileName(dir);
                if (name.StartsWith('.'))
                {
                    Directory.Delete(dir, recursive: true); // a shard that was being written
                    continue;
                }
                if (!name.StartsWith("part-", StringComparison.Ordinal) || !int.TryParse(name.AsSpan(5), out int shard) || shard >= shardCount)
                    continue;
                try
                {
                    using var part = GradientCache.Open(dir);
                    var expected = ShardRows(samples, shard, rowsPerShard).Select(s => s.Id);
                    if (part.Ids.SequenceEqual(expected) && part.Manifest.Shards.Count == 1)
                    {
                        finished.Add(shard);
                        continue;
                    }
                }
                catch (GradientCacheException)
                {
                }
                Directory.Delete(dir, recursive: true);
            }
        }
        else
        {
            Directory.CreateDirectory(partial);
            File.WriteAllText(fingerprintPath, fingerprint.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        return finished;
    }

    private static void Assemble(string partial, string output, int shardCount, IReadOnlyList<ParameterSpec> parameters, double l2, JsonObject extra)
    {
        string parent = Path.GetDirectoryName(output)!;
        string temporary = Path.Combine(parent, $".{Path.GetFileName(output)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temporary);
        var shards = new List<ShardRef>();
        try
        {
            for (int s = 0; s < shardCount; s++)
            {
                string dir = Path.Combine(partial, PartName(s));
                var manifest = GradientCacheManifest.Load(Path.Combine(dir, GradientCacheManifest.FileName));
                var only = manifest.Shards.Single();
                var shard = new ShardRef($"shard-{s:D5}.safetensors", $"shard-{s:D5}.ids");
                File.Move(Path.Combine(dir, only.File), Path.Combine(temporary, shard.File));
                File.Move(Path.Combine(dir, only.Ids), Path.Combine(temporary, shard.Ids));
                shards.Add(shard);
            }
            new GradientCacheManifest(parameters, l2, shards, extra).Save(Path.Combine(temporary, GradientCacheManifest.FileName));
            if (Directory.Exists(output))
                Directory.Delete(output);
            Directory.Move(temporary, output);
        }
        catch
        {
            Directory.Delete(temporary, recursive: true);
            throw;
        }
    }

    /// <summary>config.json's hash and the weight files' names and lengths (hashing many GB of weights would cost more
    /// than the check is worth).</summary>
    private static string ModelFingerprint(string modelDirectory)
    {
        var text = new StringBuilder();
        text.Append(File.ReadAllText(Path.Combine(modelDirectory, LlamaConfig.FileName)));
        foreach (var file in Directory.EnumerateFiles(modelDirectory, "*.safetensors").Order(StringComparer.Ordinal))
            text.Append('\n').Append(Path.GetFileName(file)).Append(' ').Append(new FileInfo(file).Length);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }
}
