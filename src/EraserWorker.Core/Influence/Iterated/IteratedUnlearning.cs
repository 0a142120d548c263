using System.Diagnostics;
using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Iterated;

/// <summary>
/// The iterated update (docs/spec.md §1.6): minimises the hybrid edited objective
/// <code>
///   F(θ) = g_Aᵀd + ½ dᵀ(H_A + λI)d + Σ_{i∈M} (ℓ'ᵢ(θ) − ℓ'ᵢ(θ₀)),   d = θ − θ₀,   g_A = −Σ_{i∈R∪M} gᵢ
/// </code>
/// — the retained samples by their quadratic model on the cached rows (masked, resident or streamed, never copied), the
/// corrected samples by their exact loss (<see cref="IEditedSampleLoss"/>) — by Gauss–Newton steps inside a
/// Levenberg–Marquardt trust region. Each step solves the same kind of system as SPEC §1.2, with the corrected samples'
/// curvature rows recomputed at θ_k, right-hand side −∇F(θ_k) and λ + μ, by the engine's own solvers (Woodbury reuses
/// the warm Gram; only the |M| bordering rows change). The first trial uses μ = 0: it is exactly the one-step update.
/// A step is accepted only when F decreases. A pure function of (base, cache, edit set, loss, settings).
/// </summary>
public static class IteratedUnlearning
{
    /// <summary>A trial is accepted when the actual decrease is at least this fraction of the model's prediction.</summary>
    private const double AcceptRatio = 1e-4;

    /// <summary>
    /// Computes θ' and its report. With <see cref="UpdateMethod.OneStep"/>, or when replacements are given as rows only
    /// (<paramref name="loss"/> null), this is <see cref="InfluenceEngine.Compute"/> with a report saying so.
    /// </summary>
    /// <param name="replacementSets">Resolves replacement-set keys for the one-step path (rows only).</param>
    /// <param name="loss">The corrected samples' exact loss; its ids must be exactly the edit set's replaced ids. May be
    /// null when nothing is replaced.</param>
    public static UnlearningUpdate Compute(InfluenceEngine engine, EditSet edits, Func<string, GradientCache>? replacementSets,
        IEditedSampleLoss? loss, SolverOptions solver, IteratedOptions options, IProgress<EngineProgress>? progress = null,
        CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(edits);
        if (solver.Problems(name => name).Concat(options.Problems(name => name)).ToList() is { Count: > 0 } problems)
            throw new UnlearningException(FailureCodes.InvalidRequest, "Invalid update options: " + string.Join(" ", problems));
        if (options.Method == UpdateMethod.OneStep || (edits.Replaced.Count > 0 && loss is null))
        {
            var oneStep = engine.Compute(edits, replacementSets, solver, progress, cancellation);
            string reason = edits.IsEmpty ? "no-edits" : options.Method == UpdateMethod.OneStep ? "one-step" : "no-texts";
            var predicted = edits.IsEmpty ? 0 : PredictedChange(engine, edits, replacementSets, oneStep.Theta);
            return oneStep with
            {
                Update = new UpdateReport("one-step", reason, edits.IsEmpty ? 0 : 1, [], oneStep.UpdateNorm, oneStep.UpdateNorm, predicted)
                {
                    Solves = edits.IsEmpty ? 0 : 1, Seconds = oneStep.Report.Seconds,
                },
            };
        }
        if (solver.Solver == SolverKind.LlmEraser)
            throw new UnlearningException(FailureCodes.InvalidRequest,
                "The iterated update needs an exact solver (auto, direct or cg), not llmeraser.");
        CheckSamples(edits, loss);
        lock (engine.Gate)
        {
            engine.ThrowIfDisposed();
            return new Iteration(engine, edits, loss, solver, options, progress, cancellation).Run();
        }
    }

    private static void CheckSamples(EditSet edits, IEditedSampleLoss? loss)
    {
        var covered = loss?.SampleIds ?? [];
        var replaced = edits.Replaced.Keys;
        if (covered.Count != replaced.Count() || covered.Distinct(StringComparer.Ordinal).Count() != covered.Count ||
            !covered.All(edits.Replaced.ContainsKey))
            throw new UnlearningException(FailureCodes.InvalidRequest,
                $"The corrected samples' loss covers {covered.Count} sample(s), but the edit set replaces {replaced.Count()}: " +
                "they must be the same ids, each once.");
    }

    /// <summary>Σ_{i∈R} gᵢᵀΔ + Σ_{i∈M} g'ᵢᵀΔ from the cache and the replacement sets (the one-step path).</summary>
    private static double PredictedChange(InfluenceEngine engine, EditSet edits, Func<string, GradientCache>? sets, double[] theta)
    {
        var delta = theta.Select((v, i) => v - engine.Theta0[i]).ToArray();
        double change = 0;
        foreach (var id in edits.Removed)
            change += Dot(engine.Cache.ReadRowDouble(CacheMatrix.Gradients, engine.RowOf(id)), delta);
        foreach (var (id, key) in edits.Replaced)
        {
            var set = sets!(key);
            if (set.TryGetRow(id, out int row))
                change += Dot(set.ReadRowDouble(CacheMatrix.Gradients, row), delta);
        }
        return change;
    }

    internal static double Dot(double[] a, double[] b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++)
            sum += a[i] * b[i];
        return sum;
    }

    /// <summary>One run of the iteration; all tensors live in its dispose scope.</summary>
    private sealed class Iteration(InfluenceEngine engine, EditSet edits, IEditedSampleLoss? loss, SolverOptions solver,
        IteratedOptions options, IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        private readonly CurvatureRows _rows = engine.Rows;
        private readonly long _p = engine.Cache.ParameterCount;

        public UnlearningUpdate Run()
        {
            var watch = Stopwatch.StartNew();
            using var scope = torch.NewDisposeScope();
            var device = _rows.Device;
            int passes = _rows.Source.Passes;
            long bytesRead = _rows.Source.BytesRead;

            // The retained part: keep mask and b = Σ_{R∪M} gᵢ (so g_A = −b, by stationarity of θ₀); the removed part of b
            // alone gives the predicted change of the removed samples' loss.
            var keep = new double[_rows.Count];
            Array.Fill(keep, 1.0);
            var removedGradient = new double[_p];
            var b = new double[_p];
            foreach (var id in edits.Removed)
            {
                int row = engine.RowOf(id);
                keep[row] = 0;
                Accumulate(removedGradient, engine.Cache.ReadRowDouble(CacheMatrix.Gradients, row));
            }
            Accumulate(b, removedGradient);
            foreach (var id in edits.Replaced.Keys)
            {
                int row = engine.RowOf(id);
                keep[row] = 0;
                Accumulate(b, engine.Cache.ReadRowDouble(CacheMatrix.Gradients, row));
            }
            var keepTensor = torch.tensor(keep, device: device);
            var bTensor = torch.tensor(b, device: device);
            var summary = new EditSummary(edits.Removed.Count, edits.Replaced.Count, keep.Count(k => k != 0), _p);

            var theta0 = engine.Theta0;
            var at0 = Evaluate(theta0);
            var curvature = CurvatureTensor(at0);
            double damping = solver.Damping ?? engine.DefaultDamping(keep, curvature, progress, cancellation);
            if (damping < 0 || !double.IsFinite(damping))
                throw new UnlearningException(FailureCodes.InvalidRequest, $"Damping must be a finite number ≥ 0 (got {damping}).");
            double lambda = engine.Cache.L2 + damping;
            // H_A v + λv over the retained rows (one pass); the corrected samples' curvature is added per step.
            var retained = new EditedProblem(_rows, keepTensor, null, bTensor, lambda, damping, cancellation);
            double trustUnit = options.InitialTrustDamping * Math.Max(MeanEigenvalue(keep, curvature), lambda);
            double tolerance = solver.ToleranceFor(engine.Options.Precision);

            var d = torch.zeros(_p, dtype: ScalarType.Float64, device: device);
            var hd = torch.zeros(_p, dtype: ScalarType.Float64, device: device);   // (H_A + λI) d
            double loss0 = at0.Value, f = 0;
            var gradient = Gradient(bTensor, hd, at0);
            double gradient0 = gradient.norm().item<double>();
            double relativeGradient = 1, mu = 0, lastStepNorm = 0, editedLoss = loss0;
            var objective = new List<double>();
            int iterations = 0, rejected = 0, solves = 0;
            string stop = "max-iterations";
            SolverReport? lastSolve = null;

            while (iterations < options.MaxIterations)
            {
                int rejectedInRow = 0;
                bool accepted = false;
                while (!accepted)
                {
                    cancellation.ThrowIfCancellationRequested();
                    var step = new EditedProblem(_rows, keepTensor, curvature, gradient.neg(), lambda + mu, damping, cancellation);
                    var (s, report) = Solve(step, tolerance);
                    solves++;
                    lastSolve = report;
                    var hs = retained.Hessian(s);
                    double curvatureTerm = 0;
                    if (curvature is not null)
                    {
                        var cs = curvature.to(ScalarType.Float64).mv(s);
                        curvatureTerm = cs.dot(cs).item<double>();
                    }
                    // The Gauss–Newton model's decrease (μ only shapes the step, not the model of F).
                    double predicted = -(gradient.dot(s).item<double>() + 0.5 * (s.dot(hs).item<double>() + curvatureTerm));
                    var trialD = d.Plus(s);
                    var trialHd = hd.Plus(hs);
                    var trialTheta = Theta(theta0, trialD);
                    double trialLoss = loss is null ? 0 : loss.Value(trialTheta);
                    double trialF = -bTensor.dot(trialD).item<double>() + 0.5 * trialD.dot(trialHd).item<double>() + (trialLoss - loss0);
                    double decrease = f - trialF;
                    double ratio = predicted > 0 ? decrease / predicted : double.NaN;
                    if (double.IsFinite(trialF) && decrease > 0 && ratio >= AcceptRatio)
                    {
                        accepted = true;
                        d.Dispose(); hd.Dispose();
                        (d, hd) = (trialD, trialHd);
                        f = trialF;
                        editedLoss = trialLoss;
                        lastStepNorm = s.norm().item<double>();
                        objective.Add(f);
                        iterations++;
                        mu = ratio > 0.75 ? (mu / 4 < trustUnit * 1e-3 ? 0 : mu / 4) : ratio < 0.25 ? Math.Max(4 * mu, trustUnit) : mu;
                        progress?.Report(new EngineProgress("iterated", iterations, options.MaxIterations, f));
                        if (decrease <= options.DecreaseTolerance * -f)
                            stop = "converged-decrease";
                    }
                    else
                    {
                        trialD.Dispose(); trialHd.Dispose();
                        rejected++;
                        mu = Math.Max(4 * mu, trustUnit);
                        if (++rejectedInRow >= options.MaxRejections)
                        {
                            stop = "no-decrease";
                            break;
                        }
                    }
                }
                if (!accepted)
                    break;
                var at = Evaluate(Theta(theta0, d));
                curvature = CurvatureTensor(at);
                gradient = Gradient(bTensor, hd, at);
                relativeGradient = gradient0 == 0 ? 0 : gradient.norm().item<double>() / gradient0;
                if (relativeGradient <= options.GradientTolerance)
                    stop = "converged-gradient";
                if (stop != "max-iterations")
                    break;
            }
            if (iterations == 0)
                throw new UnlearningException(FailureCodes.NumericalFailure,
                    $"The iterated update found no step that lowers the edited objective in {rejected} trial(s) " +
                    $"(Levenberg–Marquardt damping up to {mu:G3}); nothing was written. Check the corrected samples' loss or use --update oneStep.");

            var delta = d.cpu().data<double>().ToArray();
            var theta = Theta(theta0, d);
            double updateNorm = Math.Sqrt(Dot(delta, delta));
            var solveReport = lastSolve! with
            {
                Seconds = watch.Elapsed.TotalSeconds,
                Damping = damping,
                Lambda = lambda,
                Rows = engine.RowsReport(_rows.Source.Passes - passes, _rows.Source.BytesRead - bytesRead),
            };
            SolveAcceptance.Ensure(solveReport, tolerance, delta.All(double.IsFinite), updateNorm, summary.Removed + summary.Replaced,
                solver.RequireConvergence);
            double predictedChange = Dot(removedGradient, delta) + Dot(at0.Gradient, delta);
            var update = new UpdateReport("iterated", stop, iterations, objective, lastStepNorm, updateNorm, predictedChange)
            {
                EditedLossChange = loss is null ? null : editedLoss - loss0,
                RejectedSteps = rejected,
                RelativeGradient = relativeGradient,
                TrustDamping = mu,
                Solves = solves,
                Seconds = watch.Elapsed.TotalSeconds,
            };
            return new UnlearningUpdate(theta, solveReport, updateNorm, summary) { Update = update };
        }

        private EditedSampleEvaluation Evaluate(double[] theta)
        {
            if (loss is null)
                return new EditedSampleEvaluation(0, new double[_p], []);
            var at = loss.Evaluate(theta);
            if (at.Gradient.Length != _p || at.CurvatureRows.Count != loss.SampleIds.Count || at.CurvatureRows.Any(r => r.Length != _p))
                throw new UnlearningException(FailureCodes.InternalError,
                    $"The corrected samples' loss returned a gradient or curvature rows of the wrong size (P = {_p}).");
            if (!double.IsFinite(at.Value) || !at.Gradient.All(double.IsFinite) || !at.CurvatureRows.All(r => r.All(double.IsFinite)))
                throw new UnlearningException(FailureCodes.NumericalFailure,
                    "The corrected samples' loss, gradient or curvature is not finite at the current parameters; nothing was written.");
            return at;
        }

        private Tensor? CurvatureTensor(EditedSampleEvaluation at)
        {
            if (at.CurvatureRows.Count == 0)
                return null;
            var flat = new double[at.CurvatureRows.Count * _p];
            for (int i = 0; i < at.CurvatureRows.Count; i++)
                at.CurvatureRows[i].CopyTo(flat, i * _p);
            return torch.tensor(flat, [at.CurvatureRows.Count, _p], device: _rows.Device).to(_rows.ComputeType);
        }

        /// <summary>∇F(θ) = −b + (H_A + λI)d + Σ_M ∇ℓ'ᵢ(θ).</summary>
        private Tensor Gradient(Tensor b, Tensor hd, EditedSampleEvaluation at) =>
            (hd - b).Plus(torch.tensor(at.Gradient, device: _rows.Device));

        private (Tensor Step, SolverReport Report) Solve(EditedProblem problem, double tolerance)
        {
            var kind = engine.Choose(solver.Solver, problem);
            ISolver implementation = kind == SolverKind.Direct ? new DirectSolver() : new ConjugateGradientSolver();
            var outcome = implementation.Solve(problem, new SolveContext(solver, tolerance, engine.Options.MemoryBudgetBytes, progress, cancellation));
            double residual = outcome.RelativeResidual ?? problem.RelativeResidual(outcome.X);
            var report = new SolverReport(SolverOptions.Name(kind), outcome.Method, outcome.Iterations, 0, residual, problem.Damping, problem.Lambda);
            // Each step is a solve like the one-step update's and is held to the same acceptance rule.
            SolveAcceptance.Ensure(report, tolerance, true, 1, 0, solver.RequireConvergence);
            return (outcome.X, report);
        }

        private double MeanEigenvalue(double[] keep, Tensor? curvature) =>
            engine.EditedCurvatureTrace(keep, curvature, progress, cancellation) / _p;

        private static double[] Theta(double[] theta0, Tensor d)
        {
            var delta = d.cpu().data<double>().ToArray();
            var theta = new double[theta0.Length];
            for (int i = 0; i < theta.Length; i++)
                theta[i] = theta0[i] + delta[i];
            return theta;
        }

        private static void Accumulate(double[] target, double[] row)
        {
            for (int i = 0; i < target.Length; i++)
                target[i] += row[i];
        }
    }
}
