using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Models;

namespace EraserWorker.Evaluation;

/// <summary>
/// Every knob of an experiment run, fixed before any evaluation seed is run (kronfluence's split: these are the
/// arguments; <see cref="ExperimentRunner"/> is the task). <see cref="Quick"/> and <see cref="Full"/> differ only in
/// scale (base-model steps, training-set size, seeds) — never in the methods' hyper-parameters.
/// </summary>
public sealed record ExperimentSettings
{
    public required string Name { get; init; }

    // ---- base model: a tiny LLaMA pretrained here on the corpus ----
    public int VocabSize { get; init; } = 512;
    public int Hidden { get; init; } = 128;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int Intermediate { get; init; } = 344;
    public int PretrainSteps { get; init; } = 600;
    public int PretrainBatch { get; init; } = 16;
    public int PretrainSequence { get; init; } = 128;
    public double PretrainLearningRate { get; init; } = 3e-3;

    // ---- fine-tuning task ----
    /// <summary>Training samples per seed.</summary>
    public int TrainSamples { get; init; } = 200;
    /// <summary>Held-out samples (same template, unseen keys).</summary>
    public int TestSamples { get; init; } = 40;
    /// <summary>Share of training prompts with a typo in the key (the query-modification task corrects them).</summary>
    public double NoisyPromptFraction { get; init; } = 0.10;
    /// <summary>Share of training responses replaced by a wrong value (the response-correction task corrects them).</summary>
    public double CorruptedResponseFraction { get; init; } = 0.20;
    public double[] RemovalFractions { get; init; } = [0.01, 0.05, 0.10];
    public int[] Seeds { get; init; } = [1, 2, 3];
    /// <summary>Task kinds to run: removal, query-modification, response-correction.</summary>
    public string[] Tasks { get; init; } = ["removal", "query-modification", "response-correction"];
    /// <summary>Methods to run besides retrain and none (see <see cref="ExperimentRunner.Methods"/>).</summary>
    public string[] Methods { get; init; } = ["eraser-direct", "eraser-direct-ef", "eraser-exact-cg", "llmeraser", "gradient-ascent"];

    public double DampingOf(string task, string method) => Dampings.GetValueOrDefault($"{task}/{(method == "llmeraser" ? "eraser-direct" : method)}");

    // ---- LoRA fine-tuning (the original adapter and every retraining) ----
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    public string[] TargetModules { get; init; } = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    public int Epochs { get; init; } = 100;
    public int BatchSize { get; init; } = 16;
    public double LearningRate { get; init; } = 1e-2;
    /// <summary>L2 of the objective in SPEC §1's sum convention (also the cache's l2: λ of the influence update).</summary>
    public double L2 { get; init; } = 10.0;

    // ---- methods ----
    /// <summary>Damping δ added to l2 (λ = l2 + δ) per "task/variant" (variants eraser-direct, eraser-direct-ef,
    /// eraser-exact-cg; llmeraser shares eraser-direct's quadratic); missing entries are 0. When
    /// <see cref="CalibrationSeed"/> is set, the run replaces these with the values calibrated on that seed.</summary>
    public Dictionary<string, double> Dampings { get; init; } = [];
    /// <summary>A development seed, never one of <see cref="Seeds"/>, on which the damping is chosen before the evaluation
    /// seeds run, per task kind (removal of <see cref="CalibrationFraction"/>, and the seed's own query modification and
    /// response correction) and engine variant: the grid value closest to retraining on both the forget
    /// set's effect and the retain loss (least |log effect ratio| + |log(retain loss / retraining's)|). Null: use
    /// <see cref="Dampings"/> as given.</summary>
    public int? CalibrationSeed { get; init; } = 0;
    public double CalibrationFraction { get; init; } = 0.05;
    public double[] DampingGrid { get; init; } = [0, 1, 3, 10, 30, 100];
    /// <summary>The grid for the exact-Hessian variant (each point is a full conjugate-gradient solve over the model).</summary>
    public double[] ExactDampingGrid { get; init; } = [1, 3, 10];
    /// <summary>Exact-HVP conjugate gradient: relative-residual target and iteration cap.</summary>
    public double ExactCgTolerance { get; init; } = 1e-3;
    public int ExactCgMaxIterations { get; init; } = 20;
    /// <summary>Gradient ascent on the forget set: Adam steps at the fine-tuning learning rate.</summary>
    public int GradientAscentSteps { get; init; } = 10;

    public LoraConfig Lora => new() { R = Rank, LoraAlpha = Alpha, TargetModules = TargetModules };

    public LlamaConfig BaseConfig => RandomLlama.Tiny(VocabSize, Hidden, Layers, Heads, KvHeads, Intermediate, tied: true) with
    {
        BosTokenId = ByteLevelBpeTrainer.BosId,
        EosTokenId = ByteLevelBpeTrainer.EosId,
        PadTokenId = ByteLevelBpeTrainer.PadId,
    };

    /// <summary>The preset with the properties of a JSON object (camelCase, as written in results.json) replaced.</summary>
    public static ExperimentSettings Override(ExperimentSettings preset, string json, string source)
    {
        var options = new JsonSerializerOptions(JsonSerializerDefaults.Web) { UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow };
        try
        {
            var merged = JsonSerializer.SerializeToNode(preset, options)!.AsObject();
            if (JsonNode.Parse(json) is not JsonObject changes)
                throw new InvalidDataException($"{source}: expected a JSON object of settings.");
            foreach (var (key, value) in changes)
                merged[key] = value?.DeepClone();
            return merged.Deserialize<ExperimentSettings>(options)!;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: {e.Message}", e);
        }
    }

    /// <summary>Every task on 3 seeds at a small scale: under 10 minutes on 2 CPU cores.</summary>
    public static ExperimentSettings Quick => new()
    {
        Name = "quick",
        PretrainSteps = 300,
        TrainSamples = 100,
        TestSamples = 30,
        Seeds = [1, 2, 3],
    };

    /// <summary>The documented run (docs/results/): 200 training samples, 5 seeds. The base model is pretrained as in
    /// <see cref="Quick"/> (300 steps, about 4.6 passes over the corpus): 1200 steps overfit the small corpus (3.57
    /// nats/token held out, against 3.01 after 300).</summary>
    public static ExperimentSettings Full => new()
    {
        Name = "full",
        PretrainSteps = 300,
        TrainSamples = 200,
        TestSamples = 40,
        Seeds = [1, 2, 3, 4, 5],
    };
}
