using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Safetensors;
using EraserWorker.Models.Tests.TestSupport;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Models.Tests;

/// <summary>Loading and the forward pass: dtypes, shards, tied embeddings, LoRA with B = 0, and logits/loss/gradients
/// against an independent PyTorch implementation (python3-torch) on the same weights.</summary>
public sealed class ModelForwardTests
{
    private static double[] Logits(LlamaModel model, LoraLayout? layout, double[]? theta, int[] ids)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var input = torch.tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], ScalarType.Int64);
        ILoraDelta? lora = layout is null ? null : new SharedLora(layout, torch.tensor(theta!, ScalarType.Float64).to_type(model.DType));
        return model.Forward(input, lora).to_type(ScalarType.Float64).data<double>().ToArray();
    }

    [Fact]
    public void Lora_with_B_zero_reproduces_the_base_model_logits_exactly()
    {
        using var world = new TinyWorld(bStd: 0);
        using var model = world.LoadModel(ComputePrecision.Float32);
        var (layout, theta) = LoraAdapterFiles.Read(world.AdapterDirectory, world.Config);
        Assert.Contains(theta, x => x != 0); // A is not zero
        var ids = world.Samples[0].PromptIds.Concat(world.Samples[0].ResponseIds).ToArray();
        Assert.Equal(Logits(model, null, null, ids), Logits(model, layout, theta, ids));
        // and a non-zero B changes them
        theta[layout.Modules[0].OffsetB] = 0.5;
        Assert.NotEqual(Logits(model, null, null, ids), Logits(model, layout, theta, ids));
    }

    [Theory]
    [InlineData(DTypeConversion.F16, 1, false)]
    [InlineData(DTypeConversion.BF16, 3, false)]
    [InlineData(DTypeConversion.F32, 2, true)]
    public void F16_BF16_sharded_and_tied_checkpoints_load_to_the_values_they_store(string dtype, int shards, bool tied)
    {
        var config = RandomLlama.Tiny(tied: tied);
        using var world = new TinyWorld(config, modelDType: dtype, shards: shards);
        if (shards > 1)
            Assert.True(File.Exists(Path.Combine(world.ModelDirectory, ModelCheckpoint.IndexFileName)));
        using var model = world.LoadModel(ComputePrecision.Float32);
        Assert.Equal(tied, model.TiedEmbeddings);
        var checkpoint = ModelCheckpoint.Open(world.ModelDirectory);
        Assert.Equal(dtype, checkpoint.DTypeOf("model.layers.1.mlp.down_proj.weight"));
        using var w = checkpoint.Load("model.layers.1.mlp.down_proj.weight", ScalarType.Float64, torch.CPU);
        Assert.True(w.data<double>().ToArray().All(v => double.IsFinite(v)));
        // the logits are finite and the loss near log(vocab) for random weights
        var runtime = world.Runtime(model);
        var losses = runtime.Losses(world.Samples, world.Theta);
        Assert.All(losses, l => Assert.InRange(l, 0.5, 3 * Math.Log(config.VocabSize)));
    }

    [Fact]
    public void Unsupported_inputs_fail_with_clear_messages()
    {
        Assert.Contains("model_type", Assert.Throws<InvalidDataException>(() => LlamaConfig.Parse("{\"model_type\":\"gpt2\"}")).Message);
        Assert.Contains("multiple", Assert.Throws<InvalidDataException>(() => LlamaConfig.Parse("{\"num_attention_heads\":4,\"num_key_value_heads\":3,\"hidden_size\":32}")).Message);
        Assert.Contains("DoRA", Assert.Throws<InvalidDataException>(() => LoraConfig.Parse("{\"use_dora\":true,\"target_modules\":[\"q_proj\"]}")).Message);
        Assert.Contains("modules_to_save", Assert.Throws<InvalidDataException>(() => LoraConfig.Parse("{\"modules_to_save\":[\"lm_head\"],\"target_modules\":[\"q_proj\"]}")).Message);
        using var world = new TinyWorld();
        Assert.Contains("outside the vocabulary",
            Assert.Throws<InvalidDataException>(() => TrainingData.ParseLine("{\"id\":\"x\",\"promptIds\":[1],\"responseIds\":[999]}", "l:1", 64, null)).Message);
        Assert.Contains("no tokenizer",
            Assert.Throws<InvalidDataException>(() => TrainingData.ParseLine("{\"id\":\"x\",\"prompt\":\"a\",\"response\":\"b\"}", "l:1", 64, null)).Message);
    }

    [Fact]
    public void Target_modules_rank_and_alpha_patterns_and_rslora_follow_peft()
    {
        var config = RandomLlama.Tiny(layers: 3);
        var lora = LoraConfig.Parse("""
            {"peft_type":"LORA","r":4,"lora_alpha":8,"use_rslora":true,"target_modules":["q_proj","down_proj"],
             "layers_to_transform":[0,2],"rank_pattern":{"down_proj":2},"alpha_pattern":{"model.layers.2.self_attn.q_proj":16}}
            """);
        var layout = new LoraLayout(config, lora);
        Assert.Equal(["0 QProj 4 4", "0 DownProj 2 5.6569", "2 QProj 4 8", "2 DownProj 2 5.6569"],
            layout.Modules.Select(m => $"{m.Layer} {m.Target} {m.Rank} {m.Scaling:0.####}"));
        Assert.Equal("base_model.model.model.layers.2.mlp.down_proj.lora_B.weight", layout.Parameters[^1].Name);
        Assert.Equal([32L, 2], layout.Parameters[^1].Shape);
        var regex = new LoraLayout(config, LoraConfig.Parse("{\"target_modules\":\".*\\\\.(k|v)_proj\",\"r\":1}"));
        Assert.Equal(6, regex.Modules.Count);
        Assert.All(regex.Modules, m => Assert.True(m.Target is LoraTarget.KProj or LoraTarget.VProj));
    }

    [Fact]
    public void Logits_losses_and_gradients_match_an_independent_pytorch_implementation()
    {
        using var world = new TinyWorld(samples: 3);
        var result = PythonReference.Run(world.ModelDirectory, world.AdapterDirectory, world.DataFile);
        using var model = world.LoadModel(ComputePrecision.Float64);
        var runtime = world.Runtime(model);
        var rows = runtime.PerSample(world.Samples, world.Theta, curvature: false, seed: 1);
        var layout = world.Layout;
        var samples = result.RootElement.GetProperty("samples").EnumerateArray().ToList();
        Assert.Equal(3, samples.Count);
        for (int i = 0; i < samples.Count; i++)
        {
            var s = world.Samples[i];
            var reference = samples[i];
            var ids = s.PromptIds.Concat(s.ResponseIds).ToArray();
            var logits = Logits(model, layout, world.Theta, ids);
            var expected = reference.GetProperty("fullLogits").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            Assert.True(Vectors.RelativeError(logits, expected) < 1e-8, $"logits of {s.Id}: {Vectors.RelativeError(logits, expected)}");
            Assert.Equal(reference.GetProperty("loss").GetDouble(), rows.Losses[i], 1e-8 * rows.Losses[i]);
            var gradients = reference.GetProperty("gradients");
            var flat = new double[layout.ParameterCount];
            foreach (var m in layout.Modules)
            {
                gradients.GetProperty(m.KeyA).EnumerateArray().Select(e => e.GetDouble()).ToArray().CopyTo(flat, m.OffsetA);
                gradients.GetProperty(m.KeyB).EnumerateArray().Select(e => e.GetDouble()).ToArray().CopyTo(flat, m.OffsetB);
            }
            var ours = rows.Gradient(i).ToArray().Select(x => (double)x).ToArray();
            // rows are stored as float32: compare at float32 accuracy
            Assert.True(Vectors.RelativeError(ours, flat) < 1e-6, $"gradient of {s.Id}: {Vectors.RelativeError(ours, flat)}");
        }

        // float32 compute against the float64 reference
        using var model32 = world.LoadModel(ComputePrecision.Float32);
        var losses32 = world.Runtime(model32).Losses(world.Samples, world.Theta);
        for (int i = 0; i < samples.Count; i++)
            Assert.Equal(samples[i].GetProperty("loss").GetDouble(), losses32[i], 4);
    }
}
