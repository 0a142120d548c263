using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Solvers;

/// <summary>
/// Exact solve by Cholesky, in whichever space is smaller: parameter space (P×P) or sample space by
/// Woodbury, x = (b − D_Aᵀ(λI + D_A D_Aᵀ)⁻¹ D_A b)/λ, whose Gram reuses the warm C Cᵀ. A few steps of
/// iterative refinement with the same factor recover what float32 products lose.
/// </summary>
internal sealed class DirectSolver : ISolver
{
    private const int MaxRefinements = 3;

    public static bool UsesParameterSpace(EditedProblem problem) => problem.Parameters <= problem.SystemRows;

    public static long DenseBytes(EditedProblem problem)
    {
        long size = Math.Min(problem.Parameters, problem.SystemRows);
        return size * size * 8;
    }

    public SolveOutcome Solve(EditedProblem problem, SolveContext context)
    {
        if (!(problem.Lambda > 0))
            throw new UnlearningException(FailureCodes.NumericalFailure,
                "The direct solver needs λ = l2 + damping > 0; set a damping or use the cg solver.");
        bool parameterSpace = UsesParameterSpace(problem);
        Func<Tensor, Tensor> applyInverse = parameterSpace ? ParameterSpace(problem, context) : Woodbury(problem, context);

        // Iterative refinement. The first residual is computed with float64 products (one precise pass); after that
        // r ← r − H'd with the working product (float64 sums on CPU, float32 elsewhere): d is a small correction, so
        // that product's rounding, relative to ‖d‖, stays far below the residual itself (the classic refinement argument).
        var x = applyInverse(problem.B);
        var residual = problem.Residual(x);
        double bNorm = problem.B.norm().item<double>();
        int refinements = 0;
        double relative;
        while (true)
        {
            double rNorm = residual.norm().item<double>();
            relative = bNorm == 0 ? rNorm : rNorm / bNorm;
            if (relative <= context.Tolerance || refinements == MaxRefinements)
                break;
            var correction = applyInverse(residual);
            x = x.Plus(correction);
            residual = residual - problem.Hessian(correction);
            refinements++;
        }
        return new SolveOutcome(x, 1 + refinements, parameterSpace ? "parameter-space" : "woodbury", relative);
    }

    private static Func<Tensor, Tensor> ParameterSpace(EditedProblem problem, SolveContext context)
    {
        long p = problem.Parameters, n = problem.Rows.Count;
        var h = torch.zeros(p, p, dtype: ScalarType.Float64, device: problem.Rows.Device);
        long step = Math.Max(1, (16L << 20) / Math.Max(1, p));
        var keep = problem.Keep.to(problem.Rows.DType);
        for (long first = 0; first < n; first += step)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            using var scope = torch.NewDisposeScope();
            long count = Math.Min(step, n - first);
            var block = problem.Rows.Rows.narrow(0, first, count) * keep.narrow(0, first, count).unsqueeze(1);
            h.AddInPlace(block.t().matmul(block).to(ScalarType.Float64));
        }
        if (problem.ReplacementRows is not null)
        {
            var rep = problem.ReplacementRows.to(ScalarType.Float64);
            h.AddInPlace(rep.t().matmul(rep));
        }
        h.diagonal().AddInPlace(problem.Lambda);
        var factor = Cholesky(h);
        return rhs => torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1);
    }

    private static Func<Tensor, Tensor> Woodbury(EditedProblem problem, SolveContext context)
    {
        var active = problem.ActiveIndices;
        var gram = problem.Rows.Gram(context.Progress, context.Cancellation);
        var k = gram.index_select(0, active).index_select(1, active);
        if (problem.ReplacementRows is not null)
        {
            var rep = problem.ReplacementRows;
            var cross = problem.Rows.Rows.matmul(rep.t()).to(ScalarType.Float64).index_select(0, active);
            var self = rep.matmul(rep.t()).to(ScalarType.Float64);
            k = torch.cat([torch.cat([k, cross], 1), torch.cat([cross.t(), self], 1)], 0);
        }
        k.diagonal().AddInPlace(problem.Lambda);
        var factor = Cholesky(k);
        long n = problem.Rows.Count;
        return rhs =>
        {
            var full = problem.Forward(rhs);
            var compact = Compact(full, active, n, problem.ReplacementCount);
            var y = torch.cholesky_solve(compact.unsqueeze(1), factor).squeeze(1);
            var spread = torch.zeros(n + problem.ReplacementCount, dtype: ScalarType.Float64, device: rhs.device);
            spread.narrow(0, 0, n).index_copy_(0, active, y.narrow(0, 0, active.shape[0]));
            if (problem.ReplacementCount > 0)
                spread.narrow(0, n, problem.ReplacementCount).copy_(y.narrow(0, active.shape[0], problem.ReplacementCount));
            return (rhs - problem.Backward(spread)).DividedBy(problem.Lambda);
        };
    }

    private static Tensor Compact(Tensor full, Tensor active, long n, long replacements)
    {
        var activePart = full.narrow(0, 0, n).index_select(0, active);
        return replacements == 0 ? activePart : torch.cat([activePart, full.narrow(0, n, replacements)]);
    }

    private static Tensor Cholesky(Tensor matrix)
    {
        var (factor, info) = torch.linalg.cholesky_ex(matrix);
        if (info.item<int>() != 0)
            throw new UnlearningException(FailureCodes.NumericalFailure,
                $"Cholesky factorisation failed (leading minor {info.item<int>()} not positive): the system is not positive definite; increase the damping.");
        return factor;
    }
}
