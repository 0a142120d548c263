using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.Safetensors;

namespace EraserWorker.Models;

/// <summary>
/// Writes small random LLaMA-family models, LoRA adapters and token datasets in the Hugging Face / PEFT formats —
/// for tests and benchmarks (no download needed). Deterministic in the seed.
/// </summary>
public static class RandomLlama
{
    /// <summary>A tiny configuration: GQA (4 query heads, 2 key/value heads), 2 layers.</summary>
    public static LlamaConfig Tiny(int vocab = 64, int hidden = 32, int layers = 2, int heads = 4, int kvHeads = 2, int intermediate = 48,
        bool tied = false, double ropeTheta = 10000) => new()
        {
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = intermediate,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = hidden / heads,
            RmsNormEps = 1e-6,
            RopeTheta = ropeTheta,
            TieWordEmbeddings = tied,
            BosTokenId = 1,
            EosTokenId = 2,
            MaxPositionEmbeddings = 512,
        };

    /// <summary>Writes config.json and the weights (one model.safetensors, or <paramref name="shards"/> files with an
    /// index) in <paramref name="dtype"/>. Weights ~ N(0, 0.02²)·scale-free except norms ~ 1 + N(0, 0.1²).</summary>
    /// <param name="embeddingStd">Standard deviation of the embedding (default 0.3 when tied, else 1).</param>
    public static void WriteModel(string directory, LlamaConfig config, int seed, string dtype = DTypeConversion.F32, int shards = 1, double std = 0.08,
        double? embeddingStd = null)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, LlamaConfig.FileName), config.ToJson());
        var random = new Random(seed);
        var tensors = new List<(string Name, long[] Shape, double[] Values)>();
        void Add(string name, double mean, double sd, params long[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var values = new double[n];
            for (long i = 0; i < n; i++)
                values[i] = mean + sd * Gaussian(random);
            tensors.Add((name, shape, values));
        }
        // Tied embeddings double as lm_head: keep the logits moderate.
        Add("model.embed_tokens.weight", 0, embeddingStd ?? (config.TieWordEmbeddings ? 0.3 : 1.0), config.VocabSize, config.HiddenSize);
        for (int l = 0; l < config.NumHiddenLayers; l++)
        {
            Add($"model.layers.{l}.input_layernorm.weight", 1, 0.1, config.HiddenSize);
            foreach (var t in LoraTargets.All)
            {
                var (input, output) = LoraTargets.Dimensions(config, t);
                Add(LoraTargets.ModulePath(l, t) + ".weight", 0, std * 4 / Math.Sqrt(input) , output, input);
                bool bias = t <= LoraTarget.OProj ? config.AttentionBias || (config.QkvBiasOnly && t != LoraTarget.OProj) : config.MlpBias;
                if (bias)
                    Add(LoraTargets.ModulePath(l, t) + ".bias", 0, 0.05, output);
            }
            Add($"model.layers.{l}.post_attention_layernorm.weight", 1, 0.1, config.HiddenSize);
        }
        Add("model.norm.weight", 1, 0.1, config.HiddenSize);
        if (!config.TieWordEmbeddings)
            Add("lm_head.weight", 0, 1.0 / Math.Sqrt(config.HiddenSize), config.VocabSize, config.HiddenSize);

        var groups = Enumerable.Range(0, shards).Select(s => tensors.Where((_, i) => i % shards == s).ToList()).ToList();
        var map = new JsonObject();
        for (int s = 0; s < shards; s++)
        {
            string file = shards == 1 ? ModelCheckpoint.SingleFileName : $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            var encoded = groups[s].Select(t =>
            {
                var bytes = new byte[t.Values.Length * DTypeConversion.ElementSize(dtype)];
                DTypeConversion.FromDouble(dtype, t.Values, bytes);
                map[t.Name] = file;
                return (t.Name, dtype, (IReadOnlyList<long>)t.Shape, (ReadOnlyMemory<byte>)bytes);
            }).ToList();
            SafetensorsWriter.WriteFile(Path.Combine(directory, file), encoded, new Dictionary<string, string> { ["format"] = "pt" });
        }
        if (shards > 1)
            File.WriteAllText(Path.Combine(directory, ModelCheckpoint.IndexFileName),
                new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map }.ToJsonString());
    }

    /// <summary>Writes a LoRA adapter with A ~ U(±1/√in) and B ~ N(0, <paramref name="bStd"/>²) (B = 0 when bStd = 0, PEFT's initialisation).</summary>
    public static double[] WriteAdapter(string directory, LlamaConfig model, LoraConfig lora, int seed, double bStd = 0.05, string dtype = DTypeConversion.F32)
    {
        var layout = new LoraLayout(model, lora);
        var theta = LoraAdapterFiles.Initialise(layout, seed);
        var random = new Random(seed + 7919);
        foreach (var m in layout.Modules)
            for (long i = 0; i < m.CountB; i++)
                theta[m.OffsetB + i] = bStd * Gaussian(random);
        // Round to the storage dtype so θ is exactly what the file holds.
        var bytes = new byte[theta.Length * DTypeConversion.ElementSize(dtype)];
        DTypeConversion.FromDouble(dtype, theta, bytes);
        DTypeConversion.ToDouble(dtype, bytes, theta);
        LoraAdapterFiles.Write(directory, layout, theta, dtype);
        return theta;
    }

    /// <summary>Random token samples: prompts of <paramref name="minPrompt"/>..<paramref name="maxPrompt"/> tokens,
    /// responses of <paramref name="minResponse"/>..<paramref name="maxResponse"/> tokens, ids s000, s001, ...</summary>
    public static List<TokenizedSample> Samples(int count, int vocab, int seed, int minPrompt = 2, int maxPrompt = 8, int minResponse = 1, int maxResponse = 6)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(i => new TokenizedSample(
            $"s{i:D3}",
            Enumerable.Range(0, random.Next(minPrompt, maxPrompt + 1)).Select(_ => random.Next(3, vocab)).ToArray(),
            Enumerable.Range(0, random.Next(minResponse, maxResponse + 1)).Select(_ => random.Next(3, vocab)).ToArray())).ToList();
    }

    private static double Gaussian(Random random)
    {
        double u1 = 1.0 - random.NextDouble(), u2 = random.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
