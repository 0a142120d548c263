using EraserWorker.Contracts;
using System.Diagnostics;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence.Rows;
using EraserWorker.Core.Influence.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence;

/// <summary>
/// The influence-function update of one base adapter against its gradient cache (SPEC §1), kept warm:
/// the curvature rows live on the compute device between calls — or, when they do not fit
/// <see cref="ComputeOptions.MemoryBudgetBytes"/>, are streamed from the cache files for every product — and the
/// Gram matrix, once built (or loaded from its derived file beside the cache), serves every later direct solve. Each <see cref="Compute"/> starts from the base θ₀ with the full cumulative
/// edit set, so the result depends on nothing but (base, cache, edits). Calls are serialised.
/// </summary>
public sealed class InfluenceEngine : IDisposable
{
    private readonly CurvatureRows _rows;
    private readonly ComputeOptions _options;
    private readonly Lock _gate = new();
    private bool _disposed;

    private InfluenceEngine(double[] theta0, GradientCache cache, CurvatureRows rows, ComputeOptions options, TimeSpan loadTime)
    {
        Theta0 = theta0;
        Cache = cache;
        _rows = rows;
        _options = options;
        LoadTime = loadTime;
    }

    /// <summary>θ₀: the adapter's values of the cache's parameters, concatenated in the cache's order.</summary>
    public double[] Theta0 { get; }

    public GradientCache Cache { get; }

    public IReadOnlyList<ParameterSpec> Parameters => Cache.Parameters;

    public TimeSpan LoadTime { get; }

    public string DeviceName => _rows.Device.ToString();

    /// <summary>Bytes of device memory the warm state holds (resident rows and, once built, the Gram).</summary>
    public long BytesHeld => _rows.BytesHeld;

    /// <summary>How the rows are held (resident or streamed), in which dtype, the memory accounted for, and why.</summary>
    public RowPlan RowPlan => _rows.Plan;

    /// <summary>Where the Gram came from: built (and saved), loaded from its derived file, or why not.</summary>
    public string GramStatus => _rows.GramStatus;

    /// <summary>The derived Gram file this engine built and saved beside the cache, or null (see <see cref="Warm"/>).</summary>
    public string? SavedGramPath => _rows.SavedGramPath;

    /// <summary>True when the budget admits the Gram, so <see cref="Warm"/> builds (or loads) it.</summary>
    public bool GramFits => _rows.HasGram || _rows.Plan.GramFits;

    /// <summary>Reads θ₀ from the adapter and plans the rows: resident ones are read onto the device now, streamed
    /// ones are read by every pass.
    /// The engine takes ownership of <paramref name="cache"/>.</summary>
    public static InfluenceEngine Load(PeftAdapter adapter, GradientCache cache, ComputeOptions options,
        IProgress<EngineProgress>? progress = null, CancellationToken cancellation = default)
    {
        var watch = Stopwatch.StartNew();
        var theta0 = InputValidation.AdapterMatchesCache(adapter, cache);
        var device = ComputeDevice.Resolve(options.Device);
        var rows = CurvatureRows.Load(cache, options, device, progress, cancellation);
        return new InfluenceEngine(theta0, cache, rows, options, watch.Elapsed);
    }

    /// <summary>As <see cref="Load(PeftAdapter, GradientCache, ComputeOptions, IProgress{EngineProgress}?, CancellationToken)"/>
    /// with the rows' plan adjusted (tests: float64 rows on the CPU exercise the tensor products a GPU runs).</summary>
    internal static InfluenceEngine Load(PeftAdapter adapter, GradientCache cache, ComputeOptions options, Func<RowPlan, RowPlan> adjust)
    {
        var watch = Stopwatch.StartNew();
        var theta0 = InputValidation.AdapterMatchesCache(adapter, cache);
        var device = ComputeDevice.Resolve(options.Device);
        var plan = adjust(RowPlan.Choose(cache.RowCount, cache.ParameterCount, cache.StorageDType, cache.ElementSize, options,
            device.type == DeviceType.CPU));
        var rows = CurvatureRows.Load(cache, options, device, plan, null, default);
        return new InfluenceEngine(theta0, cache, rows, options, watch.Elapsed);
    }

    /// <summary>Builds or loads the Gram now, when the budget admits it (it is otherwise built by the first direct solve
    /// that needs it); a no-op when it does not fit (the solves then run cg).</summary>
    public void Warm(IProgress<EngineProgress>? progress = null, CancellationToken cancellation = default)
    {
        lock (_gate)
        {
            if (GramFits)
                _rows.Gram(progress, cancellation);
        }
    }

    /// <param name="edits">The cumulative edit set, relative to the base.</param>
    /// <param name="replacementSets">Resolves a replacement-set key of <see cref="EditSet.Replaced"/> to its rows.</param>
    public UnlearningUpdate Compute(EditSet edits, Func<string, GradientCache>? replacementSets, SolverOptions solver,
        IProgress<EngineProgress>? progress = null, CancellationToken cancellation = default)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (solver.Problems(name => name) is { Count: > 0 } problems)
                throw new UnlearningException(FailureCodes.InvalidRequest, "Invalid solver options: " + string.Join(" ", problems));
            var watch = Stopwatch.StartNew();
            using var scope = torch.NewDisposeScope();
            long p = Cache.ParameterCount;
            int passes = _rows.Source.Passes;
            long bytesRead = _rows.Source.BytesRead;
            var problem = Assemble(edits, replacementSets, solver, progress, cancellation);
            var summary = new EditSummary(edits.Removed.Count, edits.Replaced.Count, (int)problem.ActiveCount, p);
            if (edits.IsEmpty)
                return new UnlearningUpdate((double[])Theta0.Clone(),
                    new SolverReport("none", "no-edits", 0, 0, 0, problem.Damping, problem.Lambda), 0, summary);

            double tolerance = solver.ToleranceFor(_options.Precision);
            var context = new SolveContext(solver, tolerance, _options.MemoryBudgetBytes, progress, cancellation);
            var kind = Choose(solver.Solver, problem);
            ISolver implementation = kind switch
            {
                SolverKind.Direct => new DirectSolver(),
                SolverKind.Cg => new ConjugateGradientSolver(),
                _ => new LlmEraserSolver(),
            };
            var outcome = implementation.Solve(problem, context);
            double residual = outcome.RelativeResidual ?? problem.RelativeResidual(outcome.X);
            var delta = outcome.X.cpu().data<double>().ToArray();
            var theta = new double[p];
            double norm = 0;
            for (long i = 0; i < p; i++)
            {
                theta[i] = Theta0[i] + delta[i];
                norm += delta[i] * delta[i];
            }
            var report = new SolverReport(SolverOptions.Name(kind), outcome.Method, outcome.Iterations,
                watch.Elapsed.TotalSeconds, residual, problem.Damping, problem.Lambda)
            {
                Rows = RowsReport(_rows.Source.Passes - passes, _rows.Source.BytesRead - bytesRead),
            };
            SolveAcceptance.Ensure(report, tolerance, delta.All(double.IsFinite), Math.Sqrt(norm), summary.Removed + summary.Replaced,
                solver.RequireConvergence);
            return new UnlearningUpdate(theta, report, Math.Sqrt(norm), summary);
        }
    }

    /// <summary>The warm rows, the serialising gate and the options, for solvers of the edited objective that run
    /// several systems over the same rows (<see cref="Iterated.IteratedUnlearning"/>).</summary>
    internal CurvatureRows Rows => _rows;

    internal Lock Gate => _gate;

    internal ComputeOptions Options => _options;

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    internal SolverKind Choose(SolverKind requested, EditedProblem problem)
    {
        if (requested != SolverKind.Auto)
            return requested;
        if (!(problem.Lambda > 0))
            return SolverKind.Cg;
        // Woodbury needs the Gram, which the plan admits only when it fits the budget beside the rows and buffers;
        // parameter space needs its P × P matrix beside what the rows hold.
        if (!DirectSolver.UsesParameterSpace(problem))
            return _rows.HasGram || _rows.Plan.GramFits ? SolverKind.Direct : SolverKind.Cg;
        return DirectSolver.DenseBytes(problem) + _rows.BytesHeld <= _options.MemoryBudgetBytes ? SolverKind.Direct : SolverKind.Cg;
    }

    private EditedProblem Assemble(EditSet edits, Func<string, GradientCache>? replacementSets, SolverOptions solver,
        IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        long n = Cache.RowCount, p = Cache.ParameterCount;
        var b = new double[p];
        var keep = new double[n];
        Array.Fill(keep, 1.0);

        foreach (var id in edits.Removed)
        {
            int row = RowOf(id);
            keep[row] = 0;
            Accumulate(b, Cache.ReadRowDouble(CacheMatrix.Gradients, row), 1);
        }

        var replacementRows = new List<double[]>();
        foreach (var (id, key) in edits.Replaced)
        {
            int row = RowOf(id);
            keep[row] = 0;
            var set = ResolveReplacements(replacementSets, key);
            if (!set.TryGetRow(id, out int replacementRow))
                throw new UnlearningException(FailureCodes.ReplacementMissing,
                    $"The replacement set '{key}' has no rows for sample '{id}'.");
            Accumulate(b, Cache.ReadRowDouble(CacheMatrix.Gradients, row), 1);
            Accumulate(b, set.ReadRowDouble(CacheMatrix.Gradients, replacementRow), -1);
            replacementRows.Add(set.ReadRowDouble(CacheMatrix.Curvature, replacementRow));
        }

        var device = _rows.Device;
        var keepTensor = torch.tensor(keep, device: device);
        Tensor? replacements = null;
        if (replacementRows.Count > 0)
        {
            var flat = new double[replacementRows.Count * p];
            for (int i = 0; i < replacementRows.Count; i++)
                replacementRows[i].CopyTo(flat, i * p);
            replacements = torch.tensor(flat, [replacementRows.Count, p], device: device).to(_rows.ComputeType);
        }

        double damping = solver.Damping ?? DefaultDamping(keep, replacements, progress, cancellation);
        if (damping < 0 || !double.IsFinite(damping))
            throw new UnlearningException(FailureCodes.InvalidRequest, $"Damping must be a finite number ≥ 0 (got {damping}).");
        return new EditedProblem(_rows, keepTensor, replacements, torch.tensor(b, device: device), Cache.L2 + damping, damping, cancellation);
    }

    /// <summary>SPEC §1: 0 when l2 &gt; 0, else 0.1 × the mean eigenvalue of the edited data term, Σᵢ‖cᵢ‖²/P.</summary>
    internal double DefaultDamping(double[] keep, Tensor? replacements, IProgress<EngineProgress>? progress, CancellationToken cancellation) =>
        Cache.L2 > 0 ? 0 : 0.1 * EditedCurvatureTrace(keep, replacements, progress, cancellation) / Cache.ParameterCount;

    /// <summary>The trace of the edited data term: Σᵢ keepᵢ‖cᵢ‖² over the cache's rows plus ‖replacements‖²_F.</summary>
    internal double EditedCurvatureTrace(double[] keep, Tensor? replacements, IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        var squares = _rows.RowSquares(progress, cancellation);
        double trace = 0;
        for (int i = 0; i < keep.Length; i++)
            trace += squares[i] * keep[i];
        if (replacements is not null)
        {
            var rep = replacements.to(ScalarType.Float64);
            trace += (rep * rep).sum().item<double>();
        }
        return trace;
    }

    internal RowsReport RowsReport(int passes, long bytesRead) => new(
        _rows.Plan.Residency == RowResidency.Resident ? "resident" : "streamed", _rows.Plan.HoldDType, _rows.Plan.Reason,
        passes, bytesRead, _rows.BytesHeld, _rows.Memory.Peak, _rows.Plan.BudgetBytes, _rows.GramStatus);

    internal int RowOf(string sampleId) =>
        Cache.TryGetRow(sampleId, out int row)
            ? row
            : throw new UnlearningException(FailureCodes.UnknownSample, $"Sample '{sampleId}' is not in the gradient cache.");

    private GradientCache ResolveReplacements(Func<string, GradientCache>? resolve, string key)
    {
        if (resolve is null)
            throw new UnlearningException(FailureCodes.ReplacementMissing, $"No replacement set is available for '{key}'.");
        var set = resolve(key);
        InputValidation.ReplacementSetMatchesCache(set, Cache, $"'{key}'");
        return set;
    }

    private static void Accumulate(double[] target, double[] row, double sign)
    {
        for (int i = 0; i < target.Length; i++)
            target[i] += sign * row[i];
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            _rows.Dispose();
            Cache.Dispose();
        }
    }
}
