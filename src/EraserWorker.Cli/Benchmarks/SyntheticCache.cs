using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using TorchSharp;

namespace EraserWorker.Cli.Benchmarks;

/// <summary>
/// A LoRA-shaped adapter and a gradient cache of Gaussian rows for it. Only for timing: the numbers carry no meaning.
/// Shapes: pairs of A [8, 1000] and B [1000, 8] plus a head for the remainder (any P), or LLaMA-7B's q_proj and
/// v_proj at r = 8 (32 layers × 2 × (A [8, 4096] + B [4096, 8]) = 4 194 304 parameters).
/// </summary>
internal static class SyntheticCache
{
    public const string Llama7bQvR8 = "llama-7b-qv-r8";

    /// <summary>The parameter layout of a shape name, or of the generic LoRA pairs for <paramref name="parameters"/>.</summary>
    public static IReadOnlyList<ParameterSpec> Layout(string? shape, int parameters)
    {
        var specs = new List<ParameterSpec>();
        if (shape == Llama7bQvR8)
        {
            for (int layer = 0; layer < 32; layer++)
                foreach (var module in new[] { "q_proj", "v_proj" })
                {
                    specs.Add(new ParameterSpec($"base_model.model.model.layers.{layer}.self_attn.{module}.lora_A.weight", [8, 4096]));
                    specs.Add(new ParameterSpec($"base_model.model.model.layers.{layer}.self_attn.{module}.lora_B.weight", [4096, 8]));
                }
            return specs;
        }
        if (shape is not null)
            throw new ArgumentException($"Unknown shape '{shape}' (known: {Llama7bQvR8}).");
        int remaining = parameters, index = 0;
        while (remaining >= 16_000)
        {
            specs.Add(new ParameterSpec($"base_model.model.model.layers.{index}.self_attn.q_proj.lora_A.weight", [8, 1000]));
            specs.Add(new ParameterSpec($"base_model.model.model.layers.{index}.self_attn.q_proj.lora_B.weight", [1000, 8]));
            remaining -= 16_000;
            index++;
        }
        if (remaining > 0)
            specs.Add(new ParameterSpec("base_model.model.score.weight", [1, remaining]));
        return specs;
    }

    public static void Write(string adapterDir, string cacheDir, int samples, IReadOnlyList<ParameterSpec> specs, string dtype, bool curvature, TextWriter log)
    {
        int parameters = checked((int)ParameterSpec.TotalCount(specs));

        using var generator = new torch.Generator(1234);
        System.IO.Directory.CreateDirectory(adapterDir);
        File.WriteAllText(Path.Combine(adapterDir, "adapter_config.json"),
            "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\"]}\n");
        var tensors = specs.Select(spec =>
        {
            using var values = torch.randn(spec.Count, generator: generator).Times(0.02);
            var floats = values.data<float>().ToArray();
            var bytes = new byte[floats.Length * 4];
            Buffer.BlockCopy(floats, 0, bytes, 0, bytes.Length);
            return (spec.Name, "F32", spec.Shape, (ReadOnlyMemory<byte>)bytes);
        }).ToList();
        using (var file = File.Create(Path.Combine(adapterDir, "adapter_model.safetensors")))
            SafetensorsWriter.Write(file, tensors, new Dictionary<string, string> { ["format"] = "pt" });

        using var writer = GradientCacheWriter.Create(cacheDir, specs, l2: 0, dtype, curvature, rowsPerShard: 512);
        // Rows generated at a time: at most ~64 MB of float32 per matrix, so generating stays far below the solves' memory.
        int block = (int)Math.Clamp((64L << 20) / (4L * parameters), 1, 32);
        for (int first = 0; first < samples; first += block)
        {
            int count = Math.Min(block, samples - first);
            using var scope = torch.NewDisposeScope();
            var c = torch.randn(count, parameters, generator: generator);
            var g = (c * torch.randn(count, 1, generator: generator)).Plus(torch.randn(count, parameters, generator: generator).Times(0.1));
            var cRows = c.data<float>().ToArray();
            var gRows = g.data<float>().ToArray();
            for (int i = 0; i < count; i++)
            {
                var gi = gRows.AsSpan(i * parameters, parameters);
                if (curvature)
                    writer.Append($"sample-{first + i:D6}", gi, cRows.AsSpan(i * parameters, parameters));
                else
                    writer.Append($"sample-{first + i:D6}", gi);
            }
            if (first % 512 < block)
                log.WriteLine($"  {first + count:N0} / {samples:N0} rows");
        }
        writer.Complete();
    }
}
