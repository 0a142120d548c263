using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Models;
using EraserWorker.TestSupport;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// A tiny random LLaMA (<see cref="RandomLlama"/>, 2 layers, hidden 32) with a byte-level BPE <c>tokenizer.json</c>
/// written here, a LoRA adapter on q/v, twelve text training samples and their gradient cache built by
/// <c>eraser cache build</c> (<see cref="GradientCacheBuilder"/>, sampled curvature rows, seed 7, l2 = 2). Also the
/// independent path the worker's text replacements are checked against: a replacement set built by
/// <see cref="GradientCacheBuilder"/> from the same texts, applied by <c>eraser unlearn</c> (<see cref="OfflineUnlearning"/>).
/// Written once per test class (<see cref="IClassFixture{TFixture}"/>); the folders are read-only afterwards.
/// </summary>
public sealed class TinyLlamaWorld : IDisposable
{
    public const ulong Seed = 7;
    public const double L2 = 2.0;

    /// <summary>Token 310 is a merge the model's vocabulary (302) does not have: the word "xy" cannot be used.</summary>
    public const string OutOfVocabularyWord = "xy";

    private static readonly string[] Words = ["hello", "world", "red", "blue", "cat", "dog", "sun", "moon", "tree", "stone", "river", "bird"];

    private readonly Infrastructure.TempDirectory _temp = new("eraser-tiny-llama");

    public TinyLlamaWorld()
    {
        ModelDir = _temp.Sub("model");
        AdapterDir = Path.Combine(_temp.Path, "adapter");
        CacheDir = Path.Combine(_temp.Path, "cache");
        DataFile = Path.Combine(_temp.Path, "train.jsonl");
        Config = RandomLlama.Tiny(vocab: 302) with { BosTokenId = 300, EosTokenId = 301 };
        RandomLlama.WriteModel(ModelDir, Config, seed: 5);
        TinyByteLevelTokenizer.Write(Path.Combine(ModelDir, "tokenizer.json"));
        File.WriteAllText(Path.Combine(ModelDir, "tokenizer_config.json"), """{"bos_token":"<|begin|>","eos_token":"<|end|>"}""");
        File.WriteAllText(Path.Combine(ModelDir, "README.md"), "not uploaded");
        Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj"] };
        RandomLlama.WriteAdapter(AdapterDir, Config, Lora, seed: 11, bStd: 0.05);
        var random = new Random(3);
        Samples = Enumerable.Range(0, 12).Select(i => new TextReplacement($"s{i:D2}",
            $"question {Pick(random)} {Pick(random)}", $" {Pick(random)} {Pick(random)} {Pick(random)}")).ToList();
        File.WriteAllLines(DataFile, Samples.Select(Line));
        GradientCacheBuilder.Build(new CacheBuildOptions
        {
            ModelDirectory = ModelDir,
            AdapterDirectory = AdapterDir,
            DataFile = DataFile,
            OutputDirectory = CacheDir,
            L2 = L2,
            Seed = Seed,
            Device = "cpu",
        });
    }

    public LlamaConfig Config { get; }
    public LoraConfig Lora { get; }
    public string ModelDir { get; }
    public string AdapterDir { get; }
    public string CacheDir { get; }
    public string DataFile { get; }

    /// <summary>The training samples, ids s00…s11.</summary>
    public IReadOnlyList<TextReplacement> Samples { get; }

    private static string Pick(Random random) => Words[random.Next(Words.Length)];

    public static string Line(TextReplacement r) =>
        new JsonObject { ["id"] = r.Id, ["prompt"] = r.Prompt, ["response"] = r.Response }.ToJsonString();

    /// <summary>The independent path: the replacement set <c>eraser cache build</c> writes for these texts (same model,
    /// adapter, l2, seed) — the format of a set uploaded with <c>eraser replacements upload</c>.</summary>
    public string BuildReplacementSet(IEnumerable<TextReplacement> texts, string directory)
    {
        string data = directory + ".jsonl";
        File.WriteAllLines(data, texts.Select(Line), new UTF8Encoding(false));
        GradientCacheBuilder.Build(new CacheBuildOptions
        {
            ModelDirectory = ModelDir,
            AdapterDirectory = AdapterDir,
            DataFile = data,
            OutputDirectory = directory,
            L2 = L2,
            Seed = Seed,
            Device = "cpu",
        });
        return directory;
    }

    /// <summary><c>eraser unlearn</c> on the base adapter and cache: θ' of the given edits (the worker's default solver).</summary>
    public double[] Unlearn(string output, IReadOnlyCollection<string> remove, string? replacements)
    {
        OfflineUnlearning.Run(new OfflineUnlearningJob(AdapterDir, CacheDir, remove, replacements, output, new SolverOptions(),
            new ComputeOptions { Device = "cpu" }));
        return Theta(output);
    }

    /// <summary>θ of an adapter folder in the cache's parameter order.</summary>
    public double[] Theta(string adapterDir)
    {
        using var cache = GradientCache.Open(CacheDir);
        return PeftAdapter.Open(adapterDir).ReadParameters(cache.Parameters);
    }

    /// <summary>Asserts ‖actual − expected‖ ≤ tolerance · ‖expected − θ₀‖ (and that the update is not trivial); returns
    /// the relative difference.</summary>
    public double AssertSameUpdate(double[] expected, double[] actual, double tolerance, string what)
    {
        var theta0 = Theta(AdapterDir);
        double update = Math.Sqrt(expected.Select((v, i) => (v - theta0[i]) * (v - theta0[i])).Sum());
        double difference = Math.Sqrt(expected.Select((v, i) => (v - actual[i]) * (v - actual[i])).Sum());
        Assert.True(update > 1e-6, $"{what}: the update ‖θ' − θ₀‖ = {update:E2} is trivial");
        double relative = difference / update;
        Assert.True(relative <= tolerance, $"{what}: ‖θ_worker − θ_oracle‖ / ‖θ_oracle − θ₀‖ = {relative:E2} > {tolerance:E0}");
        return relative;
    }

    public void Dispose() => _temp.Dispose();
}
