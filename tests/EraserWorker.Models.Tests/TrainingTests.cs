using EraserWorker.Core.Compute;
using EraserWorker.Models.Tests.TestSupport;

namespace EraserWorker.Models.Tests;

public sealed class TrainingTests : IDisposable
{
    private readonly TinyWorld _world = new(samples: 8);

    public void Dispose() => _world.Dispose();

    private TrainOptions Options(string output) => new()
    {
        ModelDirectory = _world.ModelDirectory,
        DataFile = _world.DataFile,
        OutputDirectory = output,
        Lora = new LoraConfig { R = 2, LoraAlpha = 4, TargetModules = ["q_proj", "v_proj", "down_proj"] },
        Epochs = 30,
        BatchSize = 4,
        LearningRate = 1e-2,
        WeightDecay = 0.01,
        Seed = 4,
        Device = "cpu",
    };

    [Fact]
    public void Training_lowers_the_loss_and_is_reproducible_from_its_seed()
    {
        var first = LoraTrainer.Train(Options(_world.Temp.Sub("a")));
        Assert.True(first.FinalMeanLoss < 0.8 * first.InitialMeanLoss, $"{first.InitialMeanLoss} → {first.FinalMeanLoss}");
        var second = LoraTrainer.Train(Options(_world.Temp.Sub("b")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(_world.Temp.Sub("a"), "adapter_model.safetensors")),
            File.ReadAllBytes(Path.Combine(_world.Temp.Sub("b"), "adapter_model.safetensors")));
        // the written adapter is a valid PEFT folder for this model, and evaluates to the reported loss
        var (layout, theta) = LoraAdapterFiles.Read(_world.Temp.Sub("a"), _world.Config);
        using var model = _world.LoadModel(ComputePrecision.Float32);
        Assert.Equal(first.FinalMeanLoss, new LoraRuntime(model, layout).Losses(_world.Samples, theta).Average(), 1e-4);
        // a new adapter starts at the base model (B = 0): its initial loss is the base model's
        using var model64 = _world.LoadModel();
        var zero = new double[layout.ParameterCount];
        Assert.Equal(first.InitialMeanLoss, new LoraRuntime(model64, layout).Losses(_world.Samples, zero).Average(), 1e-4);
    }
}
