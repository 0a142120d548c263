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
}
