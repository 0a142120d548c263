using System.Text.Json;
using EraserWorker.TestSupport;
using EraserWorker.Models.Tests.TestSupport;
using Xunit.Abstractions;

namespace EraserWorker.Models.Tests;

/// <summary>
/// The offline workflow through the command line: <c>eraser train</c> an adapter (with l2) → <c>eraser cache build</c>
/// (same l2) → <c>eraser unlearn</c> three samples → <c>eraser eval</c>: the loss on the removed samples goes up, the
/// others barely move, and the update points towards retraining without them (<c>eraser train --exclude</c>).
/// </summary>
[Collection("Console")]
public sealed class EndToEndTests(ITestOutputHelper output) : IDisposable
{
    private readonly TinyWorld _world = new(samples: 32, bStd: 0);

    public void Dispose() => _world.Dispose();

    private static (int Exit, string Out, string Err) Run(params string[] args) => ConsoleCli.Run(args);

    private JsonElement Json(params string[] args)
    {
        var (exit, stdout, stderr) = Run([.. args, "--json"]);
        Assert.True(exit == 0, $"eraser {string.Join(' ', args)} failed ({exit}): {stderr}");
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    [Fact]
    public void Train_cache_unlearn_eval_raises_the_loss_of_the_removed_samples()
    {
        string m = _world.ModelDirectory, d = _world.DataFile, t = _world.Temp.Path;
        const string l2 = "2";
        string[] removed = ["s000", "s001", "s002"];
        var trainArgs = new[] { "--model", m, "--data", d, "--rank", "2", "--alpha", "4", "--target-modules", "q_proj,v_proj,down_proj",
            "--epochs", "800", "--batch-size", "64", "--l2", l2, "--seed", "3", "--device", "cpu" };
        var trained = Json(["train", .. trainArgs, "--lr", "0.01", "--out", Path.Combine(t, "a0")]);
        output.WriteLine($"train: loss {trained.GetProperty("initialMeanLoss")} → {trained.GetProperty("finalMeanLoss")}, ‖∇L‖ {trained.GetProperty("finalGradientNorm")}");
        var cache = Json("cache", "build", "--model", m, "--adapter", Path.Combine(t, "a0"), "--data", d, "--out", Path.Combine(t, "cache"),
            "--l2", l2, "--device", "cpu");
        output.WriteLine($"cache: {cache}");
        var unlearn = Json("unlearn", "--adapter", Path.Combine(t, "a0"), "--cache", Path.Combine(t, "cache"), "--remove", string.Join(',', removed),
            "--out", Path.Combine(t, "a1"), "--device", "cpu");
        output.WriteLine($"unlearn: {unlearn}");
        // retraining baseline: the same objective without the removed samples, warm-started at θ₀
        var retrained = Json(["train", .. trainArgs, "--adapter", Path.Combine(t, "a0"), "--exclude", string.Join(',', removed),
            "--out", Path.Combine(t, "retrained"), "--lr", "0.003"]);
        output.WriteLine($"retrain: loss {retrained.GetProperty("initialMeanLoss")} → {retrained.GetProperty("finalMeanLoss")}, ‖∇L‖ {retrained.GetProperty("finalGradientNorm")}");

        double Loss(string adapter, IEnumerable<string> ids) =>
            Json("eval", "--model", m, "--adapter", Path.Combine(t, adapter), "--data", d, "--ids", string.Join(',', ids), "--device", "cpu")
                .GetProperty("meanLoss").GetDouble();
        var kept = _world.Samples.Select(s => s.Id).Except(removed).ToList();
        double before = Loss("a0", removed), after = Loss("a1", removed), retrain = Loss("retrained", removed);
        double keptBefore = Loss("a0", kept), keptAfter = Loss("a1", kept), keptRetrain = Loss("retrained", kept);
        output.WriteLine($"removed samples: loss {before:F4} (θ₀) → {after:F4} (unlearned) vs {retrain:F4} (retrained)");
        output.WriteLine($"kept samples:    loss {keptBefore:F4} (θ₀) → {keptAfter:F4} (unlearned) vs {keptRetrain:F4} (retrained)");

        var (_, theta0) = LoraAdapterFiles.Read(Path.Combine(t, "a0"), _world.Config);
        var (_, theta1) = LoraAdapterFiles.Read(Path.Combine(t, "a1"), _world.Config);
        var (_, thetaR) = LoraAdapterFiles.Read(Path.Combine(t, "retrained"), _world.Config);
        double toRetrain0 = Vectors.RelativeError(theta0, thetaR), toRetrain1 = Vectors.RelativeError(theta1, thetaR);
        double cosine = Vectors.Dot(Vectors.Axpy(-1, theta0, theta1), Vectors.Axpy(-1, theta0, thetaR)) /
            (Vectors.Norm(Vectors.Axpy(-1, theta0, theta1)) * Vectors.Norm(Vectors.Axpy(-1, theta0, thetaR)));
        output.WriteLine($"‖θ − θ_retrain‖/‖θ_retrain‖: θ₀ {toRetrain0:E3}, unlearned {toRetrain1:E3}; cos(θ'−θ₀, θ_retrain−θ₀) = {cosine:F3}");

        // the same removal with the exact Hessian (double backward over the 29 active samples), solved by CG
        using var model = LlamaModel.Load(m, Core.Compute.ComputePrecision.Float32, "cpu");
        var (layout, _) = LoraAdapterFiles.Read(Path.Combine(t, "a0"), _world.Config);
        var runtime = new LoraRuntime(model, layout);
        // The edited objective's exact Hessian is indefinite here (LoRA's bilinear BA): damp until CG sees none.
        ExactSolveResult exact = null!;
        foreach (double damping in new[] { 0.0, 2, 8, 32, 128 })
        {
            exact = ExactInfluence.Solve(runtime, theta0, _world.Samples, removed, [], lambda: 2 + damping, tolerance: 1e-6, maxIterations: 300);
            if (!exact.NegativeCurvature)
                break;
        }
        var removedSamples = _world.Samples.Where(s => removed.Contains(s.Id)).ToList();
        var keptSamples = _world.Samples.Where(s => !removed.Contains(s.Id)).ToList();
        double exactRemoved = runtime.Losses(removedSamples, exact.Theta).Average(), exactKept = runtime.Losses(keptSamples, exact.Theta).Average();
        double toRetrainExact = Vectors.RelativeError(exact.Theta, thetaR);
        output.WriteLine($"exact-Hessian CG (λ = {exact.Lambda}): {exact.Iterations} iterations, residual {exact.RelativeResidual:E2}, negative curvature {exact.NegativeCurvature}, {exact.Seconds:F2} s; " +
            $"removed loss {exactRemoved:F4}, kept loss {exactKept:F4}, ‖θ − θ_retrain‖/‖θ_retrain‖ {toRetrainExact:E3}");

        Assert.True(after > before + 0.1 * (retrain - before), "the loss on the removed samples must go up");
        Assert.True(retrain > before, "retraining without them raises their loss too");
        Assert.True(Math.Abs(keptAfter - keptBefore) < Math.Abs(after - before), "the kept samples move less than the removed ones");
        Assert.True(toRetrain1 < toRetrain0, "the update moves θ towards the retrained adapter");
        Assert.True(cosine > 0.5);
        Assert.False(exact.NegativeCurvature);
        Assert.True(exactRemoved > before + 0.5 * (retrain - before), "the exact-Hessian update raises the removed samples' loss");
        Assert.True(Math.Abs(exactKept - keptRetrain) < Math.Abs(keptAfter - keptRetrain), "the exact Hessian keeps the other samples closer to retraining");
    }
}
