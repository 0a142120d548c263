using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Models.Tests.TestSupport;

/// <summary>A tiny random LLaMA (GQA, 2 layers) in a temp folder, a LoRA adapter with B ≠ 0 on all seven projections
/// (rsLoRA off, alpha ≠ r) and a token dataset — written by the test, nothing downloaded.</summary>
public sealed class TinyWorld : IDisposable
{
    public TinyWorld(LlamaConfig? config = null, LoraConfig? lora = null, int samples = 12, string modelDType = DTypeConversion.F32,
        int shards = 1, int seed = 5, double bStd = 0.05)
    {
        Config = config ?? RandomLlama.Tiny();
        Lora = lora ?? new LoraConfig
        {
            R = 2,
            LoraAlpha = 6,
            TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        };
        RandomLlama.WriteModel(ModelDirectory, Config, seed, modelDType, shards);
        Theta = RandomLlama.WriteAdapter(AdapterDirectory, Config, Lora, seed + 1, bStd);
        Samples = RandomLlama.Samples(samples, Config.VocabSize, seed + 2);
        TrainingData.Write(DataFile, Samples);
    }

    public TempFolder Temp { get; } = new();

    public LlamaConfig Config { get; }

    public LoraConfig Lora { get; }

    public double[] Theta { get; }

    public List<TokenizedSample> Samples { get; }

    public string ModelDirectory => Temp.Sub("model");

    public string AdapterDirectory => Temp.Sub("adapter");

    public string DataFile => Temp.Sub("data.jsonl");

    public LoraLayout Layout => new(Config, Lora);

    public LoraRuntime Runtime(LlamaModel model) => new(model, Layout);

    public LlamaModel LoadModel(ComputePrecision precision = ComputePrecision.Float64) => LlamaModel.Load(ModelDirectory, precision, "cpu");

    public void Dispose() => Temp.Dispose();
}
