using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Solvers;

/// <summary>
/// The LLMEraser paper's solver, kept as a reference: Adam on f(x) = ½xᵀH'x − bᵀx + (wd/2)‖x‖², with the
/// data term of H' estimated on a uniform minibatch of rows each step (scaled to the full row count).
/// It converges slowly and only to a neighbourhood of the solution; the report says how far.
/// </summary>
internal sealed class LlmEraserSolver : ISolver
{
    private const double Beta1 = 0.9, Beta2 = 0.999, Epsilon = 1e-8;

    public SolveOutcome Solve(EditedProblem problem, SolveContext context)
    {
        var o = context.Options.LlmEraser;
        long rows = problem.SystemRows;
        var x = ScalarArgs.Full(problem.Parameters, o.InitialValue, ScalarType.Float64, problem.Rows.Device);
        var m = torch.zeros_like(x);
        var v = torch.zeros_like(x);
        using var generator = new torch.Generator((ulong)o.Seed, problem.Rows.Device);
        long batch = Math.Clamp(o.BatchSize, 1, Math.Max(1, rows));
        for (int t = 1; t <= o.Iterations; t++)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var hx = x.Times(problem.Lambda);
            if (rows > 0)
            {
                var pick = torch.randperm(rows, generator: generator, device: problem.Rows.Device).narrow(0, 0, batch);
                var block = problem.SystemRowsAt(pick);
                var projected = block.mv(x.to(block.dtype));
                hx = hx.Plus(block.t().mv(projected).to(ScalarType.Float64).Times((double)rows / batch));
            }
            var gradient = (hx - problem.B).Plus(x.Times(o.WeightDecay));
            m.MulInPlace(Beta1).AddInPlace(gradient, 1 - Beta1);
            v.MulInPlace(Beta2).AddcmulInPlace(gradient, gradient, 1 - Beta2);
            var mHat = m.DividedBy(1 - Math.Pow(Beta1, t));
            var vHat = v.DividedBy(1 - Math.Pow(Beta2, t));
            x.sub_(mHat.Times(o.LearningRate) / vHat.sqrt().Plus(Epsilon));
            if (t % 50 == 0 || t == o.Iterations)
                context.Progress?.Report(new EngineProgress("llmeraser", t, o.Iterations));
        }
        return new SolveOutcome(x, o.Iterations, "adam-minibatch-hvp");
    }
}
