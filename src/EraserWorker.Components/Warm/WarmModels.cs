using System.Diagnostics;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Models;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;

namespace EraserWorker.Components.Warm;

/// <summary>
/// An adapter's base model loaded for text replacements: the LLaMA weights, the tokenizer, the LoRA layout and θ₀ (the
/// registered base adapter, version 0, at which the gradient cache was built).
/// </summary>
public sealed class WarmModel(string adapterId, LlamaModel model, LoraRuntime runtime, ModelTokenizer? tokenizer, double[] theta0,
    string baseAdapterSha256) : IWarm
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
public sealed class WarmModels : IDisposable
{
    private readonly AdapterStore _store;
    private readonly IOptions<WorkerOptions> _worker;
    private readonly IOptions<ComputeOptions> _compute;
    private readonly ILogger<WarmModels> _logger;
    private readonly WarmSet<WarmModel> _warm;

    public WarmModels(AdapterStore store, IOptions<WorkerOptions> worker, IOptions<ComputeOptions> compute, ILogger<WarmModels> logger)
    {
        (_store, _worker, _compute, _logger) = (store, worker, compute, logger);
        _warm = new WarmSet<WarmModel>(() => worker.Value.MaxWarmModels, LoadAsync,
            evicted => logger.LogInformation("Evicted the warm model of {AdapterId}", evicted.AdapterId));
    }

    /// <summary>The loaded model of an adapter, loading it when absent. Null when the adapter was registered without a
    /// model. Throws <see cref="AdapterNotFoundException"/> when it is not registered, <see cref="InvalidDataException"/>
    /// when the stored model cannot be loaded.</summary>
    public Task<WarmModel?> GetAsync(string adapterId, CancellationToken cancellation) => _warm.GetAsync(adapterId, cancellation);

    private async Task<WarmModel?> LoadAsync(string adapterId, CancellationToken cancellation)
    {
        var watch = Stopwatch.StartNew();
        string directory = Path.Combine(_worker.Value.WorkDirectory, "models", Guid.NewGuid().ToString("N"));
        string modelDir = Path.Combine(directory, "model"), baseDir = Path.Combine(directory, "base");
        try
        {
            if (!await _store.DownloadModelAsync(adapterId, modelDir, cancellation))
                return null;
            await _store.DownloadVersionAsync(adapterId, 0, baseDir, cancellation);
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
                model = LlamaModel.Load(modelDir, ComputePrecision.Float32, _compute.Value.Device);
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or FormatException or NotSupportedException or KeyNotFoundException or ArgumentException)
            {
                throw new InvalidDataException($"The model registered with adapter '{adapterId}' cannot be loaded: {e.Message}", e);
            }
            string sha = FileHash.Sha256OfFile(Path.Combine(baseDir, PeftAdapter.WeightsFileName));
            _logger.LogInformation("Loaded the model of {AdapterId} for text replacements: {Layers} layers, vocabulary {Vocab}, P = {Parameters}, tokenizer {Tokenizer}, on {Device} in {Seconds:F2} s",
                adapterId, config.NumHiddenLayers, config.VocabSize, layout.ParameterCount, tokenizer is null ? "none" : Path.GetFileName(tokenizer.Source),
                model.Device, watch.Elapsed.TotalSeconds);
            return new WarmModel(adapterId, model, new LoraRuntime(model, layout), tokenizer, theta, sha);
        }
        finally
        {
            LocalFolder.TryDelete(directory);
        }
    }

    public void Dispose() => _warm.Dispose();
}
