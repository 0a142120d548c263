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

/// <summary>What a solve did. <see cref="RelativeResidual"/> is recomputed from the final x, never taken from the recursion.</summary>
public sealed record SolverReport(
    string Solver,
    string Method,
    int Iterations,
    double Seconds,
    double RelativeResidual,
    double Damping,
    double Lambda);

/// <summary>Sizes of the edited problem.</summary>
public sealed record EditSummary(int Removed, int Replaced, int Active, long Parameters);

public sealed record UnlearningUpdate(double[] Theta, SolverReport Report, double UpdateNorm, EditSummary Edits);

public sealed record EngineProgress(string Stage, long Done, long Total);
