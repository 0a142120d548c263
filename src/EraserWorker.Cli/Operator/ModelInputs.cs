using System.Text.Json.Nodes;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Models;

namespace EraserWorker.Cli.Operator;

/// <summary>What a validated base model holds.</summary>
public sealed record ModelSummary(string ModelType, int Layers, int VocabSize, string Tokenizer, IReadOnlyList<string> Files, long Bytes);

/// <summary>
/// Checks of a base model registered with an adapter (<c>eraser adapters register --model</c>): the worker computes the
/// rows of text replacements with it, so it must reproduce the adapter's gradient cache — the adapter fits the model's
/// LoRA layout, the layout is the cache's <c>parameters</c>, the cache was built at this adapter, its curvature rows
/// record their definition and seed, and the folder has a tokenizer.
/// </summary>
public static class ModelInputs
{
    /// <summary>The optional files uploaded beside config.json, the weights and the tokenizer.</summary>
    private static readonly string[] Optional = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"];

    /// <summary>Validates the model against the adapter and cache (nothing is written) and returns the files to upload:
    /// config.json, model.safetensors or the index and every shard it names, the tokenizer file(s), tokenizer_config.json
    /// if present.</summary>
    public static ModelSummary Validate(string modelDir, string adapterDir, string cacheDir)
    {
        if (!Directory.Exists(modelDir))
            throw new CliFailure($"the model folder '{modelDir}' does not exist.");
        var config = LlamaConfig.Load(modelDir);
        _ = ModelCheckpoint.Open(modelDir); // the weights' headers: every file present and readable
        var tokenizer = ModelTokenizer.TryLoad(modelDir, config)
            ?? throw new CliFailure($"the model folder '{modelDir}' has no tokenizer (tokenizer.json or tokenizer.model): the worker needs it to tokenise text replacements.");
        LoraLayout layout;
        try
        {
            (layout, _) = LoraAdapterFiles.Read(adapterDir, config);
        }
        catch (InvalidDataException e)
        {
            throw new CliFailure($"the adapter does not fit the model: {e.Message}", e);
        }
        var cache = GradientCacheManifest.Load(Path.Combine(cacheDir, GradientCacheManifest.FileName));
        bool curvature;
        using (var opened = GradientCache.Open(cacheDir))
            curvature = opened.HasCurvature;
        if (CacheDefinition.Problem(cache, curvature, layout.Parameters, FileHash.Sha256OfFile(Path.Combine(adapterDir, PeftAdapter.WeightsFileName))) is { } problem)
            throw new CliFailure(problem);

        var files = new List<string> { LlamaConfig.FileName };
        string index = Path.Combine(modelDir, ModelCheckpoint.IndexFileName);
        if (File.Exists(index))
        {
            files.Add(ModelCheckpoint.IndexFileName);
            var map = JsonNode.Parse(File.ReadAllText(index))?["weight_map"] as JsonObject
                ?? throw new CliFailure($"'{index}' has no weight_map.");
            files.AddRange(map.Select(p => (string?)p.Value ?? throw new CliFailure($"'{index}': weight_map entry '{p.Key}' is not a file name."))
                .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal));
        }
        else
        {
            files.Add(ModelCheckpoint.SingleFileName);
        }
        files.AddRange(Optional.Where(f => File.Exists(Path.Combine(modelDir, f))));
        long bytes = files.Sum(f => new FileInfo(Path.Combine(modelDir, f)).Length);
        return new ModelSummary(config.ModelType, config.NumHiddenLayers, config.VocabSize, Path.GetFileName(tokenizer.Source), files, bytes);
    }

    /// <summary>
    /// Checks the training texts registered beside the model (<c>--training-data</c>): every line a sample the model's
    /// tokenizer turns into tokens of its vocabulary (as <c>eraser cache build</c> reads them), each id once, and exactly the
    /// cache's ids — the texts of the samples the rows were computed from. Returns the number of samples.
    /// </summary>
    public static int ValidateTrainingData(string modelDir, string cacheDir, string trainingFile)
    {
        var config = LlamaConfig.Load(modelDir);
        var tokenizer = ModelTokenizer.TryLoad(modelDir, config);
        IReadOnlyList<TokenizedSample> samples;
        try
        {
            samples = TrainingData.Load(trainingFile, config.VocabSize, tokenizer);
        }
        catch (Exception e) when (e is InvalidDataException or ArgumentException)
        {
            throw new CliFailure($"the training texts '{trainingFile}' cannot be used: {e.Message}", e);
        }
        using var cache = GradientCache.Open(cacheDir);
        var ids = samples.Select(x => x.Id).ToHashSet(StringComparer.Ordinal);
        var missing = cache.Ids.Where(id => !ids.Contains(id)).Take(5).ToList();
        var extra = ids.Where(id => !cache.TryGetRow(id, out _)).Take(5).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new CliFailure($"the training texts '{trainingFile}' must hold exactly the gradient cache's samples ({cache.RowCount}): " +
                (missing.Count > 0 ? $"missing {string.Join(", ", missing.Select(i => $"'{i}'"))}" : "") +
                (missing.Count > 0 && extra.Count > 0 ? "; " : "") +
                (extra.Count > 0 ? $"not in the cache {string.Join(", ", extra.Select(i => $"'{i}'"))}" : "") + ".");
        return samples.Count;
    }
}
