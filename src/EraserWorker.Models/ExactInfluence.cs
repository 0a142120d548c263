using System.Diagnostics;

namespace EraserWorker.Models;

/// <summary>A matrix-free symmetric operator v ↦ H v on θ-space (float64 host vectors).</summary>
public interface IHessianOperator
{
    long Dimension { get; }

    double[] Apply(ReadOnlySpan<double> v);
}

/// <summary>
/// The exact curvature of LLMEraser's formulation: the Hessian of the edited training objective,
/// H' = ∇²[Σ_{i∈A} ℓᵢ + Σ_{i∈M} ℓᵢ'](θ₀) + λI, applied by double backward through the model
/// (<see cref="LoraRuntime.HessianVectorProduct"/>) — one pass over the active set per product.
/// </summary>
public sealed class ExactHessianOperator(LoraRuntime runtime, double[] theta0, IReadOnlyList<TokenizedSample> samples, double lambda, int batchSize = 16)
    : IHessianOperator
{
    public long Dimension => runtime.ParameterCount;

    public int Products { get; private set; }

    public double Seconds { get; private set; }

    public double[] Apply(ReadOnlySpan<double> v)
    {
        var watch = Stopwatch.StartNew();
        var hv = runtime.HessianVectorProduct(samples, theta0, v, batchSize);
        for (int i = 0; i < hv.Length; i++)
            hv[i] += lambda * v[i];
        Products++;
        Seconds += watch.Elapsed.TotalSeconds;
        return hv;
    }

    /// <summary>An unbiased minibatch estimate (n/|batch|)·∇²Σ_{batch}ℓ·v + λv (LLMEraser's stochastic products).</summary>
    public double[] ApplyMinibatch(ReadOnlySpan<double> v, IReadOnlyList<TokenizedSample> batch)
    {
        var hv = runtime.HessianVectorProduct(batch, theta0, v, batchSize);
        double scale = (double)samples.Count / batch.Count;
        for (int i = 0; i < hv.Length; i++)
            hv[i] = scale * hv[i] + lambda * v[i];
        Products++;
        return hv;
    }
}

public sealed record ExactSolveResult(double[] Theta, double[] Delta, int Iterations, int HessianProducts, double RelativeResidual,
    double Lambda, double Seconds, string Method, bool NegativeCurvature);

/// <summary>
/// Influence-function updates with the exact Hessian (SPEC §1's "later: exact curvature"): θ' = θ₀ + H'⁻¹ b with
/// b = Σ_{i∈R} gᵢ + Σ_{i∈M}(gᵢ − gᵢ'), solved by conjugate gradient (or LLMEraser's Adam on ½xᵀH'x − bᵀx) over
/// exact Hessian-vector products. All vectors in float64.
/// </summary>
public static class ExactInfluence
{
    /// <param name="training">The whole training set at θ₀.</param>
    /// <param name="removed">Ids of removed samples (R).</param>
    /// <param name="replacements">Corrected samples (M): each Id names the training sample it replaces.</param>
    /// <param name="lambda">λ = l2 + damping (the exact Hessian of cross-entropy may be indefinite away from a minimum: damp).</param>
    public static ExactSolveResult Solve(LoraRuntime runtime, double[] theta0, IReadOnlyList<TokenizedSample> training,
        IReadOnlyCollection<string> removed, IReadOnlyList<TokenizedSample> replacements, double lambda,
        double tolerance = 1e-6, int maxIterations = 100, int batchSize = 16, string method = "cg", LlmEraserSettings? llmEraser = null)
    {
        var watch = Stopwatch.StartNew();
        var removedSet = removed.ToHashSet(StringComparer.Ordinal);
        var replacedSet = replacements.Select(r => r.Id).ToHashSet(StringComparer.Ordinal);
        var byId = training.ToDictionary(s => s.Id, StringComparer.Ordinal);
        foreach (var id in removedSet.Concat(replacedSet))
            if (!byId.ContainsKey(id))
                throw new ArgumentException($"Sample '{id}' is not in the training set.");
        replacedSet.ExceptWith(removedSet);
        var active = training.Where(s => !removedSet.Contains(s.Id) && !replacedSet.Contains(s.Id)).ToList();
        var corrected = replacements.Where(r => replacedSet.Contains(r.Id)).ToList();
        var system = active.Concat(corrected).ToList();

        long p = runtime.ParameterCount;
        var b = new double[p];
        if (removedSet.Count + replacedSet.Count > 0)
        {
            var minus = training.Where(s => removedSet.Contains(s.Id) || replacedSet.Contains(s.Id)).ToList();
            var (_, gRemoved) = runtime.Gradient(minus, theta0, batchSize);
            for (long i = 0; i < p; i++)
                b[i] = gRemoved[i];
            if (corrected.Count > 0)
            {
                var (_, gNew) = runtime.Gradient(corrected, theta0, batchSize);
                for (long i = 0; i < p; i++)
                    b[i] -= gNew[i];
            }
        }
        var op = new ExactHessianOperator(runtime, theta0, system, lambda, batchSize);
        double bNorm = Norm(b);
        if (bNorm == 0)
            return new ExactSolveResult((double[])theta0.Clone(), new double[p], 0, 0, 0, lambda, watch.Elapsed.TotalSeconds, method, false);

        double[] x;
        int iterations;
        bool negative = false;
        if (method == "cg")
            (x, iterations, negative) = ConjugateGradient(op, b, tolerance, maxIterations);
        else if (method == "llmeraser")
            (x, iterations) = LlmEraser(op, b, system, llmEraser ?? new LlmEraserSettings());
        else
            throw new ArgumentException($"Unknown exact solver '{method}' (cg, llmeraser).");
        var residual = op.Apply(x);
        for (long i = 0; i < p; i++)
            residual[i] = b[i] - residual[i];
        var theta = new double[p];
        for (long i = 0; i < p; i++)
            theta[i] = theta0[i] + x[i];
        return new ExactSolveResult(theta, x, iterations, op.Products, Norm(residual) / bNorm, lambda, watch.Elapsed.TotalSeconds, method, negative);
    }

    /// <summary>Conjugate gradient on H x = b from x = 0; stops at ‖r‖ ≤ tol‖b‖, or when pᵀHp ≤ 0 (H not positive
    /// definite along p: more damping is needed).</summary>
    public static (double[] X, int Iterations, bool NegativeCurvature) ConjugateGradient(IHessianOperator h, double[] b, double tolerance, int maxIterations)
    {
        long n = b.Length;
        var x = new double[n];
        var r = (double[])b.Clone();
        var d = (double[])b.Clone();
        double rr = Dot(r, r), stop = tolerance * tolerance * rr;
        int k = 0;
        while (k < maxIterations && rr > stop)
        {
            var hd = h.Apply(d);
            double dhd = Dot(d, hd);
            if (!(dhd > 0))
                return (x, k, true);
            double alpha = rr / dhd;
            for (long i = 0; i < n; i++)
            {
                x[i] += alpha * d[i];
                r[i] -= alpha * hd[i];
            }
            double next = Dot(r, r);
            double beta = next / rr;
            for (long i = 0; i < n; i++)
                d[i] = r[i] + beta * d[i];
            rr = next;
            k++;
        }
        return (x, k, false);
    }

    private static (double[] X, int Iterations) LlmEraser(ExactHessianOperator h, double[] b, IReadOnlyList<TokenizedSample> system, LlmEraserSettings s)
    {
        long n = b.Length;
        var x = Enumerable.Repeat(s.InitialValue, (int)n).ToArray();
        var m = new double[n];
        var v = new double[n];
        var random = new Random(s.Seed);
        for (int t = 1; t <= s.Iterations; t++)
        {
            var batch = system.Count <= s.BatchSize ? system : system.OrderBy(_ => random.Next()).Take(s.BatchSize).ToList();
            var hx = h.ApplyMinibatch(x, batch);
            for (long i = 0; i < n; i++)
            {
                double g = hx[i] - b[i] + s.WeightDecay * x[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                double mh = m[i] / (1 - Math.Pow(0.9, t)), vh = v[i] / (1 - Math.Pow(0.999, t));
                x[i] -= s.LearningRate * mh / (Math.Sqrt(vh) + 1e-8);
            }
        }
        return (x, s.Iterations);
    }

    private static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (long i = 0; i < a.Length; i++)
            s += a[i] * b[i];
        return s;
    }

    private static double Norm(double[] a) => Math.Sqrt(Dot(a, a));
}

/// <summary>LLMEraser's solver knobs (x_lr, x_init, x_adjust, iterations, minibatch).</summary>
public sealed record LlmEraserSettings(double LearningRate = 1e-5, double InitialValue = 1e-5, double WeightDecay = 1e-5,
    int Iterations = 1000, int BatchSize = 32, int Seed = 1);
