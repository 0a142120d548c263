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
        var x = torch.full(problem.Parameters, o.InitialValue, dtype: ScalarType.Float64, device: problem.Rows.Device);
        var m = torch.zeros_like(x);
        var v = torch.zeros_like(x);
        using var generator = new torch.Generator((ulong)o.Seed, problem.Rows.Device);
        long batch = Math.Clamp(o.BatchSize, 1, Math.Max(1, rows));
        for (int t = 1; t <= o.Iterations; t++)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var hx = problem.Lambda * x;
            if (rows > 0)
            {
                var pick = torch.randperm(rows, generator: generator, device: problem.Rows.Device).narrow(0, 0, batch);
                var block = problem.SystemRowsAt(pick);
                var projected = block.mv(x.to(block.dtype));
                hx += block.t().mv(projected).to(ScalarType.Float64) * ((double)rows / batch);
            }
            var gradient = hx - problem.B + o.WeightDecay * x;
            m.mul_(Beta1).add_(gradient, 1 - Beta1);
            v.mul_(Beta2).addcmul_(gradient, gradient, 1 - Beta2);
            var mHat = m / (1 - Math.Pow(Beta1, t));
            var vHat = v / (1 - Math.Pow(Beta2, t));
            x.sub_(o.LearningRate * mHat / (vHat.sqrt() + Epsilon));
            if (t % 50 == 0 || t == o.Iterations)
                context.Progress?.Report(new EngineProgress("llmeraser", t, o.Iterations));
        }
        return new SolveOutcome(x, o.Iterations, "adam-minibatch-hvp");
    }
}
