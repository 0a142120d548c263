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
    public SolverKind Solver { get; init; } = SolverKind.Auto;

    /// <summary>δ added to the cache's l2. Null: 0 when l2 &gt; 0, else 0.1 × Σᵢ‖cᵢ‖²/P (SPEC §1).</summary>
    public double? Damping { get; init; }

    /// <summary>Target relative residual ‖H'x − b‖/‖b‖ of <c>cg</c> and of <c>direct</c>'s refinement.
    /// Null: 1e-10 in float64, 1e-6 in float32.</summary>
    public double? Tolerance { get; init; }

    public int MaxIterations { get; init; } = 2000;

    public LlmEraserOptions LlmEraser { get; init; } = new();

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

public sealed record UnlearningUpdate(double[] Theta, SolverReport Report, double UpdateNorm, EditSummary Edits);

public sealed record EngineProgress(string Stage, long Done, long Total);
