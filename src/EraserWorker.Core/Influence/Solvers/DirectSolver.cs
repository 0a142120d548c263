using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Solvers;

/// <summary>
/// Exact solve by Cholesky, in whichever space is smaller: parameter space (P×P, with a few steps of iterative
/// refinement against float64 residuals) or sample space by Woodbury, x = (b − D_Aᵀ(λI + D_A D_Aᵀ)⁻¹ D_A b)/λ,
/// whose Gram reuses the warm float64 C Cᵀ: two passes over the rows per solve, the true residual included.
/// </summary>
internal sealed class DirectSolver : ISolver
{
    private const int MaxRefinements = 3;

    /// <summary>Sample-space refinements of y at most (each costs one n × n product, no pass over the rows).</summary>
    private const int MaxWoodburyRefinements = 2;

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
        if (!UsesParameterSpace(problem))
            return Woodbury(problem, context);
        var applyInverse = ParameterSpace(problem, context);

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
        return new SolveOutcome(x, 1 + refinements, "parameter-space", relative);
    }

    private static Func<Tensor, Tensor> ParameterSpace(EditedProblem problem, SolveContext context)
    {
        long p = problem.Parameters;
        var h = torch.zeros(p, p, dtype: ScalarType.Float64, device: problem.Rows.Device);
        // One pass: H = Σ_blocks (keep ⊙ C_block)ᵀ C_block, float64 products.
        problem.Rows.Source.ForEachBlock((first, rows) =>
        {
            using var scope = torch.NewDisposeScope();
            var block = rows.to(ScalarType.Float64);
            var keep = problem.Keep.narrow(0, first, block.shape[0]).unsqueeze(1);
            h.AddInPlace((block * keep).t().matmul(block));
        }, context.Cancellation);
        if (problem.ReplacementRows is not null)
        {
            var rep = problem.ReplacementRows.to(ScalarType.Float64);
            h.AddInPlace(rep.t().matmul(rep));
        }
        h.diagonal().AddInPlace(problem.Lambda);
        var factor = Cholesky(h);
        return rhs => torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1);
    }

    /// <summary>
    /// Woodbury in sample space, two passes over the rows. With K = D_A D_Aᵀ (the float64 Gram's active block, plus
    /// the cross and self products of the replacement rows) and u = D_A b:
    /// <code>
    ///   pass 1:  u = D_A b, and C Rᵀ for the cross block (one pass, several vectors)
    ///   solve:   (K + λI) y = u by Cholesky, refined in float64 in sample space; s = (K + λI) y − u
    ///   pass 2:  D_Aᵀ y and D_Aᵀ s (one pass, two vectors)
    ///   x = (b − D_Aᵀ y) / λ,   b − H'x = D_Aᵀ s / λ.
    /// </code>
    /// The last identity is exact algebra for any y (H'x = D_Aᵀ(u − Ky)/λ + b − D_Aᵀy), so the residual reported is
    /// the true ‖H'x − b‖ evaluated in float64 — not a recursion's estimate — provided K is D_A D_Aᵀ to float64
    /// accuracy. That is why the Gram is accumulated from float64 products and is reused only when its content digest
    /// matches the rows. Refinement in parameter space, x ← x + H'⁻¹r, equals y ← y − (K + λI)⁻¹s, so it is done in
    /// sample space before pass 2 and costs no pass.
    /// </summary>
    private static SolveOutcome Woodbury(EditedProblem problem, SolveContext context)
    {
        var rows = problem.Rows;
        long n = rows.Count, m = problem.ReplacementCount;
        var active = problem.ActiveIndices;
        var device = problem.B.device;
        var b = problem.B.cpu().data<double>().ToArray();
        var rep = problem.ReplacementRows?.to(ScalarType.Float64);
        var vectors = new List<double[]> { b };
        for (long r = 0; r < m; r++)
            vectors.Add(rep![r].cpu().data<double>().ToArray());
        var projected = rows.Project(vectors, context.Cancellation);
        var u = torch.tensor(projected[0], device: device).index_select(0, active);
        var gram = rows.Gram(context.Progress, context.Cancellation);
        var k = gram.index_select(0, active).index_select(1, active);
        if (rep is not null)
        {
            // C Rᵀ (n × m') from pass 1, restricted to the active rows.
            var flat = new double[n * m];
            for (int r = 0; r < m; r++)
                for (long i = 0; i < n; i++)
                    flat[i * m + r] = projected[1 + r][i];
            var cross = torch.tensor(flat, [n, m], device: device).index_select(0, active);
            k = torch.cat([torch.cat([k, cross], 1), torch.cat([cross.t(), rep.matmul(rep.t())], 1)], 0);
            u = torch.cat([u, rep.mv(problem.B)]);
        }
        k.diagonal().AddInPlace(problem.Lambda);
        var factor = Cholesky(k);
        var y = torch.cholesky_solve(u.unsqueeze(1), factor).squeeze(1);
        var s = k.mv(y) - u;
        double sNorm = s.norm().item<double>(), uNorm = u.norm().item<double>();
        int refinements = 0;
        while (refinements < MaxWoodburyRefinements && sNorm > 1e-15 * uNorm)
        {
            var corrected = y - torch.cholesky_solve(s.unsqueeze(1), factor).squeeze(1);
            var next = k.mv(corrected) - u;
            double nextNorm = next.norm().item<double>();
            if (!(nextNorm < sNorm))
                break; // at float64's floor
            (y, s, sNorm) = (corrected, next, nextNorm);
            refinements++;
        }

        long na = problem.ActiveCount;
        var combined = rows.Combine([Spread(y.narrow(0, 0, na), problem.ActiveRows, n), Spread(s.narrow(0, 0, na), problem.ActiveRows, n)],
            context.Cancellation);
        var dty = torch.tensor(combined[0], device: device);
        var dts = torch.tensor(combined[1], device: device);
        if (rep is not null)
        {
            dty = dty.Plus(rep.t().mv(y.narrow(0, na, m)));
            dts = dts.Plus(rep.t().mv(s.narrow(0, na, m)));
        }
        var x = (problem.B - dty).DividedBy(problem.Lambda);
        double bNorm = problem.B.norm().item<double>();
        if (bNorm == 0)
            return new SolveOutcome(x, 1 + refinements, "woodbury", 0);
        double relative = dts.norm().item<double>() / problem.Lambda / bNorm;
        // The identity's own rounding, bounded: forming x divides float64 errors of size ε(‖b‖ + ‖D_Aᵀy‖ + √N‖D_A‖‖y‖)
        // by λ, and H' multiplies them by at most λ + ‖K‖. When that bound is not far below the tolerance (tiny λ,
        // ill-conditioned K), the residual is evaluated directly instead: one more pass, float64 products.
        double kNorm = SpectralNorm(k) - problem.Lambda;
        double bound = 4 * Epsilon * (1 + Math.Max(0, kNorm) / problem.Lambda) *
            (bNorm + dty.norm().item<double>() + Math.Sqrt(problem.SystemRows * Math.Max(0, kNorm)) * y.norm().item<double>()) / bNorm;
        if (bound > 0.1 * context.Tolerance)
            return new SolveOutcome(x, 1 + refinements, "woodbury", problem.RelativeResidual(x));
        return new SolveOutcome(x, 1 + refinements, "woodbury", relative);
    }

    /// <summary>Unit roundoff of float64.</summary>
    private const double Epsilon = 1.1102230246251565e-16;

    /// <summary>‖A‖₂ of a symmetric positive semi-definite matrix, by power iteration (an estimate from below that
    /// 30 steps bring within a few percent; the bound it feeds has a safety factor well beyond that).</summary>
    private static double SpectralNorm(Tensor a)
    {
        using var scope = torch.NewDisposeScope();
        var v = torch.ones(a.shape[0], dtype: ScalarType.Float64, device: a.device);
        double norm = 0;
        for (int i = 0; i < 30; i++)
        {
            var w = a.mv(v);
            norm = w.norm().item<double>();
            if (norm == 0)
                return 0;
            v = w.DividedBy(norm);
        }
        return norm;
    }

    /// <summary>Values over the active rows spread to all n rows (zeros at excluded ones).</summary>
    private static double[] Spread(Tensor values, long[] active, long n)
    {
        var result = new double[n];
        var v = values.cpu().data<double>().ToArray();
        for (int i = 0; i < active.Length; i++)
            result[active[i]] = v[i];
        return result;
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
