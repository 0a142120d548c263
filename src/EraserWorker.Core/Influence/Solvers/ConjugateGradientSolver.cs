using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Solvers;

/// <summary>
/// Jacobi-preconditioned conjugate gradient on H'x = b; each iteration is one product v ↦ D_Aᵀ(D_A v) + λv,
/// i.e. two passes over the warm rows, and nothing of size P×P or n×n is formed.
/// </summary>
internal sealed class ConjugateGradientSolver : ISolver
{
    public SolveOutcome Solve(EditedProblem problem, SolveContext context)
    {
        var b = problem.B;
        double bNorm = b.norm().item<double>();
        var x = torch.zeros_like(b);
        if (bNorm == 0)
            return new SolveOutcome(x, 0, "pcg-jacobi");
        var inverseDiagonal = 1.0 / problem.Diagonal().clamp_min(1e-300);
        var r = b.clone();
        var z = r * inverseDiagonal;
        var p = z.clone();
        double rz = r.dot(z).item<double>();
        int iteration = 0;
        while (iteration < context.Options.MaxIterations)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var hp = problem.Hessian(p);
            double pHp = p.dot(hp).item<double>();
            if (!(pHp > 0))
                throw new UnlearningException(UnlearningException.NumericalFailure,
                    $"Conjugate gradient broke down at iteration {iteration} (pᵀH'p = {pHp}): H' is not positive definite; increase the damping.");
            double alpha = rz / pHp;
            x.add_(p, alpha);
            r.add_(hp, -alpha);
            iteration++;
            double rNorm = r.norm().item<double>();
            if (!double.IsFinite(rNorm))
                throw new UnlearningException(UnlearningException.NumericalFailure, "Conjugate gradient produced non-finite values.");
            context.Progress?.Report(new EngineProgress("cg", iteration, context.Options.MaxIterations));
            if (rNorm <= context.Tolerance * bNorm)
                break;
            var zNext = r * inverseDiagonal;
            double rzNext = r.dot(zNext).item<double>();
            p.mul_(rzNext / rz).add_(zNext);
            rz = rzNext;
        }
        return new SolveOutcome(x, iteration, "pcg-jacobi");
    }
}
