namespace EraserWorker.Core.Influence;

public enum SolverKind
{
    /// <summary>Chooses <see cref="Direct"/> when its dense matrix fits the memory budget, else <see cref="Cg"/>.</summary>
    Auto,
    /// <summary>Exact: Cholesky in parameter space (P×P) or, when fewer rows than parameters, in sample space (Woodbury).</summary>
    Direct,
    /// <summary>Jacobi-preconditioned conjugate gradient with the matrix-free product v ↦ C_Aᵀ(C_A v) + λv.</summary>
    Cg,
    /// <summary>The LLMEraser paper's reference: Adam on ½xᵀH'x − bᵀx with minibatch Hessian-vector products.</summary>
    LlmEraser,
}

/// <summary>
/// Knobs of the paper's solver. Defaults are the published settings of the reference implementation
/// (x_lr = x_init = x_adjust = 1e-5 in LLMEraser's test_attack_movielens.sh); iterations and batch size
/// are ours, since the paper ties them to its data loader.
/// </summary>
public sealed record LlmEraserOptions
{
    public double LearningRate { get; init; } = 1e-5;
    /// <summary>Every component of the parameter change starts at this value (x_init).</summary>
    public double InitialValue { get; init; } = 1e-5;
    /// <summary>L2 regularisation added to the quadratic's gradient (x_adjust).</summary>
    public double WeightDecay { get; init; } = 1e-5;
    public int Iterations { get; init; } = 1000;
    /// <summary>Rows per minibatch Hessian-vector product.</summary>
    public int BatchSize { get; init; } = 32;
    public int Seed { get; init; } = 0;
}

public sealed record SolverOptions
{
    /// <summary>Default <see cref="Tolerance"/> when the compute precision is float32: what float32 rows with float64
    /// residuals and refinement reach on every well-posed system we have measured, with a wide margin.</summary>
    public const double DefaultFloat32Tolerance = 1e-6;

    /// <summary>Default <see cref="Tolerance"/> in float64.</summary>
    public const double DefaultFloat64Tolerance = 1e-10;

    public SolverKind Solver { get; init; } = SolverKind.Auto;

    /// <summary>δ added to the cache's l2. Null: 0 when l2 &gt; 0, else 0.1 × Σᵢ‖cᵢ‖²/P (SPEC §1).</summary>
    public double? Damping { get; init; }

    /// <summary>The relative residual ‖H'x − b‖/‖b‖ a solve must reach to be accepted (and the target of cg and of
    /// direct's refinement). Null: <see cref="DefaultFloat32Tolerance"/> or <see cref="DefaultFloat64Tolerance"/>.</summary>
    public double? Tolerance { get; init; }

    /// <summary>Iteration cap of cg (over all its refinement rounds).</summary>
    public int MaxIterations { get; init; } = 2000;

    /// <summary>
    /// When true (always, for the worker and the CLI), a solve whose true relative residual is above the tolerance is
    /// refused with <c>NumericalFailure</c>: an update that is not the solution must never be reported as an erasure.
    /// Only the evaluation sets it false, to measure how far the paper's reference solver gets.
    /// </summary>
    public bool RequireConvergence { get; init; } = true;

    public LlmEraserOptions LlmEraser { get; init; } = new();

    public double ToleranceFor(Compute.ComputePrecision precision) =>
        Tolerance ?? (precision == Compute.ComputePrecision.Float64 ? DefaultFloat64Tolerance : DefaultFloat32Tolerance);

    /// <summary>
    /// Every out-of-range setting, each as one sentence that names the setting as the caller calls it
    /// (<paramref name="nameOf"/> maps <c>nameof(MaxIterations)</c>, <c>"LlmEraser.LearningRate"</c>, … to e.g.
    /// <c>--max-iterations</c> or <c>Eraser:Worker:MaxIterations</c>). Empty when the options are usable.
    /// </summary>
    public IReadOnlyList<string> Problems(Func<string, string> nameOf)
    {
        var problems = new List<string>();
        void Require(bool ok, string setting, string rule, object? value)
        {
            if (!ok)
                problems.Add($"{nameOf(setting)} must be {rule} (got {Format(value)}).");
        }
        Require(MaxIterations >= 1, nameof(MaxIterations), "at least 1", MaxIterations);
        if (Tolerance is double tolerance)
            Require(tolerance > 0 && tolerance < 1, nameof(Tolerance), "in (0, 1)", tolerance);
        if (Damping is double damping)
            Require(double.IsFinite(damping) && damping >= 0, nameof(Damping), "a finite number ≥ 0", damping);
        if (Solver == SolverKind.LlmEraser)
        {
            var o = LlmEraser;
            Require(double.IsFinite(o.LearningRate) && o.LearningRate > 0, "LlmEraser.LearningRate", "a finite number > 0", o.LearningRate);
            Require(double.IsFinite(o.InitialValue), "LlmEraser.InitialValue", "finite", o.InitialValue);
            Require(double.IsFinite(o.WeightDecay) && o.WeightDecay >= 0, "LlmEraser.WeightDecay", "a finite number ≥ 0", o.WeightDecay);
            Require(o.Iterations >= 1, "LlmEraser.Iterations", "at least 1", o.Iterations);
            Require(o.BatchSize >= 1, "LlmEraser.BatchSize", "at least 1", o.BatchSize);
        }
        return problems;
    }

    private static string Format(object? value) => value switch
    {
        double d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        null => "nothing",
        _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };

    public static SolverKind ParseKind(string value) => value.Trim().ToLowerInvariant() switch
    {
        "auto" => SolverKind.Auto,
        "direct" => SolverKind.Direct,
        "cg" => SolverKind.Cg,
        "llmeraser" => SolverKind.LlmEraser,
        _ => throw new ArgumentException($"Unknown solver '{value}': expected auto, direct, cg or llmeraser."),
    };

    public static string Name(SolverKind kind) => kind switch
    {
        SolverKind.Direct => "direct",
        SolverKind.Cg => "cg",
        SolverKind.LlmEraser => "llmeraser",
        _ => "auto",
    };
}

/// <summary>What a solve did. <see cref="RelativeResidual"/> is the true ‖H'x − b‖/‖b‖ of the final x in float64,
/// never taken from a recursion.</summary>
public sealed record SolverReport(
    string Solver,
    string Method,
    int Iterations,
    double Seconds,
    double RelativeResidual,
    double Damping,
    double Lambda)
{
    /// <summary>How the curvature rows were held and read during this solve (null for an empty edit set).</summary>
    public RowsReport? Rows { get; init; }
}

/// <param name="Residency">"resident" or "streamed".</param>
/// <param name="DType">The dtype the rows are held or read in (F32, F16, BF16; F64 on a device in Float64).</param>
/// <param name="Reason">Why: what the memory budget allowed (see <c>Eraser:Compute:Residency</c>).</param>
/// <param name="Passes">Complete reads of the rows this solve made (from memory or from the cache files).</param>
/// <param name="BytesRead">Bytes this solve read from the cache files (0 when resident).</param>
/// <param name="HeldBytes">Bytes the engine holds after the solve: resident rows and the Gram.</param>
/// <param name="PeakBytes">Most bytes held at once since the engine was loaded: rows, Gram, read buffers, Gram panels.</param>
/// <param name="BudgetBytes"><c>Eraser:Compute:MemoryBudgetBytes</c>.</param>
/// <param name="Gram">Where the Gram came from: built (and saved), loaded from its derived file, or why not.</param>
public sealed record RowsReport(string Residency, string DType, string Reason, int Passes, long BytesRead, long HeldBytes,
    long PeakBytes, long BudgetBytes, string Gram);

/// <summary>Sizes of the edited problem.</summary>
public sealed record EditSummary(int Removed, int Replaced, int Active, long Parameters);

public sealed record UnlearningUpdate(double[] Theta, SolverReport Report, double UpdateNorm, EditSummary Edits)
{
    /// <summary>How the update was computed — one step or iterated — and the course of the iteration; null when
    /// <see cref="InfluenceEngine.Compute"/> was called directly (one step, nothing more to report).</summary>
    public Iterated.UpdateReport? Update { get; init; }
}

/// <summary>Progress of a long step. <paramref name="Done"/> of <paramref name="Total"/> units of work: rows, columns, or
/// — for the iterative stages — iterations of the cap, with the current true or recursive relative residual.</summary>
public sealed record EngineProgress(string Stage, long Done, long Total, double? Residual = null);
