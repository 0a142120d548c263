using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Solvers;

/// <summary>
/// Jacobi-preconditioned conjugate gradient on H'x = b; each iteration is one product v ↦ D_Aᵀ(D_A v) + λv,
/// i.e. two passes over the warm rows, and nothing of size P×P or n×n is formed.
/// </summary>
internal sealed class ConjugateGradientSolver : ISolver
{
    private const int MaxRefinements = 4;

    /// <summary>
    /// In float32 the product's rounding bounds what plain CG can reach, so CG runs inside an outer loop of
    /// mixed-precision refinement: each round solves H'd = r for the float64 residual r and adds d.
    /// </summary>
    public SolveOutcome Solve(EditedProblem problem, SolveContext context)
    {
        // 1.0 / d: TorchSharp computes it as d.reciprocal() * 1.0, which is d.reciprocal() exactly.
        var inverseDiagonal = problem.Diagonal().ClampMin(1e-300).reciprocal();
        double bNorm = problem.B.norm().item<double>();
        var x = torch.zeros_like(problem.B);
        int iterations = 0;
        double? relative = null;
        for (int round = 0; round <= MaxRefinements && iterations < context.Options.MaxIterations; round++)
        {
            var residual = round == 0 ? problem.B : problem.Residual(x);
            double rNorm = residual.norm().item<double>();
            relative = bNorm == 0 ? rNorm : rNorm / bNorm;
            if (bNorm == 0 || rNorm <= context.Tolerance * bNorm)
                break;
            relative = null; // x changes below
            // Each round asks for what its products can deliver (float32 ones on a device: 1e-5), relative to its
            // own right-hand side.
            double innerTolerance = Math.Max(context.Tolerance * bNorm / rNorm, problem.PreciseProducts ? 0 : 1e-5);
            var (d, used) = Pcg(problem, residual, inverseDiagonal, innerTolerance, iterations, context, rNorm / bNorm);
            x.AddInPlace(d);
            iterations += used;
        }
        return new SolveOutcome(x, iterations, "pcg-jacobi", relative);
    }

    /// <param name="done">Iterations of earlier refinement rounds: the cap and the progress count all rounds.</param>
    /// <param name="scale">‖b‖ of this round relative to the original right-hand side, so progress shows the residual
    /// relative to the original system.</param>
    private static (Tensor X, int Iterations) Pcg(EditedProblem problem, Tensor b, Tensor inverseDiagonal, double tolerance, int done,
        SolveContext context, double scale)
    {
        int maxIterations = context.Options.MaxIterations - done;
        double bNorm = b.norm().item<double>();
        var x = torch.zeros_like(b);
        var r = b.clone();
        var z = r * inverseDiagonal;
        var p = z.clone();
        double rz = r.dot(z).item<double>();
        int iteration = 0;
        while (iteration < maxIterations)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            var hp = problem.Hessian(p);
            double pHp = p.dot(hp).item<double>();
            if (!(pHp > 0))
                throw new UnlearningException(FailureCodes.NumericalFailure,
                    $"Conjugate gradient broke down at iteration {iteration} (pᵀH'p = {pHp}): H' is not positive definite; increase the damping.");
            double alpha = rz / pHp;
            x.AddInPlace(p, alpha);
            r.AddInPlace(hp, -alpha);
            iteration++;
            double rNorm = r.norm().item<double>();
            if (!double.IsFinite(rNorm))
                throw new UnlearningException(FailureCodes.NumericalFailure, "Conjugate gradient produced non-finite values.");
            context.Progress?.Report(new EngineProgress("cg", done + iteration, context.Options.MaxIterations, scale * rNorm / bNorm));
            if (rNorm <= tolerance * bNorm)
                break;
            var zNext = r * inverseDiagonal;
            double rzNext = r.dot(zNext).item<double>();
            p.MulInPlace(rzNext / rz).AddInPlace(zNext);
            rz = rzNext;
        }
        return (x, iteration);
    }
}
