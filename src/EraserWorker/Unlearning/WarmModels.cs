using System.Diagnostics;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Hosting;
using EraserWorker.Models;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;

namespace EraserWorker.Unlearning;

/// <summary>
/// An adapter's base model loaded for text replacements: the LLaMA weights, the tokenizer, the LoRA layout and θ₀ (the
/// registered base adapter, version 0, at which the gradient cache was built).
/// </summary>
public sealed class WarmModel(string adapterId, LlamaModel model, LoraRuntime runtime, ModelTokenizer? tokenizer, double[] theta0,
    string baseAdapterSha256) : IDisposable
{
    public string AdapterId { get; } = adapterId;
    public LlamaModel Model { get; } = model;
    public LoraRuntime Runtime { get; } = runtime;

    /// <summary>Null when the registered model folder has no tokenizer.json / tokenizer.model.</summary>
    public ModelTokenizer? Tokenizer { get; } = tokenizer;

    /// <summary>θ₀ in the layout's order (the cache's <c>parameters</c> order).</summary>
    public double[] Theta0 { get; } = theta0;

    /// <summary>SHA-256 of the base adapter's <c>adapter_model.safetensors</c>.</summary>
    public string BaseAdapterSha256 { get; } = baseAdapterSha256;

    /// <summary>Serialises the use of the runtime (<see cref="LoraRuntime"/> is not thread-safe).</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);

    public void Dispose()
    {
        Model.Dispose();
        Gate.Dispose();
    }
}

/// <summary>
/// Least-recently-used set of loaded base models (at most <see cref="WorkerOptions.MaxWarmModels"/>), the model
/// counterpart of <see cref="WarmEngines"/>: the model registered with an adapter (<c>adapters/&lt;id&gt;/model/</c>) and
/// its version 0 are downloaded and loaded once, then compute the rows of every text replacement of that adapter.
/// </summary>
public sealed class WarmModels(AdapterStore store, IOptions<WorkerOptions> worker, IOptions<ComputeOptions> compute,
    ILogger<WarmModels> logger) : IDisposable
{
    private readonly LinkedList<WarmModel> _recent = new();
    private readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>The loaded model of an adapter, loading it when absent. Null when the adapter was registered without a
    /// model. Throws <see cref="AdapterNotFoundException"/> when it is not registered, <see cref="InvalidDataException"/>
    /// when the stored model cannot be loaded.</summary>
    public async Task<WarmModel?> GetAsync(string adapterId, CancellationToken cancellation)
    {
        await _gate.WaitAsync(cancellation);
        try
        {
            var node = _recent.First;
            while (node is not null && node.Value.AdapterId != adapterId)
                node = node.Next;
            if (node is not null)
            {
                _recent.Remove(node);
                _recent.AddFirst(node);
                return node.Value;
            }
            var loaded = await LoadAsync(adapterId, cancellation);
            if (loaded is null)
                return null;
            _recent.AddFirst(loaded);
            while (_recent.Count > worker.Value.MaxWarmModels)
            {
                var evicted = _recent.Last!.Value;
                _recent.RemoveLast();
                await evicted.Gate.WaitAsync(cancellation); // a computation still using it finishes first
                evicted.Dispose();
                logger.LogInformation("Evicted the warm model of {AdapterId}", evicted.AdapterId);
            }
            return loaded;
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task<WarmModel?> LoadAsync(string adapterId, CancellationToken cancellation)
    {
        var watch = Stopwatch.StartNew();
        string directory = Path.Combine(worker.Value.WorkDirectory, "models", Guid.NewGuid().ToString("N"));
        string modelDir = Path.Combine(directory, "model"), baseDir = Path.Combine(directory, "base");
        try
        {
            if (!await store.DownloadModelAsync(adapterId, modelDir, cancellation))
                return null;
            await store.DownloadVersionAsync(adapterId, 0, baseDir, cancellation);
            // The weights are read into memory: the downloaded folder is deleted below.
            LlamaConfig config;
            LlamaModel model;
            LoraLayout layout;
            double[] theta;
            ModelTokenizer? tokenizer;
            try
            {
                config = LlamaConfig.Load(modelDir);
                (layout, theta) = LoraAdapterFiles.Read(baseDir, config);
                tokenizer = ModelTokenizer.TryLoad(modelDir, config);
                // Float32, like `eraser cache build`'s default: the rows must match the cache's definition.
                model = LlamaModel.Load(modelDir, ComputePrecision.Float32, compute.Value.Device);
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or FormatException or NotSupportedException or KeyNotFoundException or ArgumentException)
            {
                throw new InvalidDataException($"The model registered with adapter '{adapterId}' cannot be loaded: {e.Message}", e);
            }
            string sha = FileHash.Sha256OfFile(Path.Combine(baseDir, PeftAdapter.WeightsFileName));
            logger.LogInformation("Loaded the model of {AdapterId} for text replacements: {Layers} layers, vocabulary {Vocab}, P = {Parameters}, tokenizer {Tokenizer}, on {Device} in {Seconds:F2} s",
                adapterId, config.NumHiddenLayers, config.VocabSize, layout.ParameterCount, tokenizer is null ? "none" : Path.GetFileName(tokenizer.Source),
                model.Device, watch.Elapsed.TotalSeconds);
            return new WarmModel(adapterId, model, new LoraRuntime(model, layout), tokenizer, theta, sha);
        }
        finally
        {
            TryDelete(directory);
        }
    }

    private static void TryDelete(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
                Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public void Dispose()
    {
        foreach (var model in _recent)
            model.Dispose();
        _recent.Clear();
        _gate.Dispose();
    }
}
