using System.CommandLine;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Commands;

/// <summary>Options shared by the commands that compute an update: device, precision and solver knobs.</summary>
internal sealed class ComputeCliOptions
{
    private readonly Option<string> _device = new("--device") { Description = "auto | cpu | cuda | cuda:N", DefaultValueFactory = _ => "auto" };
    private readonly Option<ComputePrecision> _precision = new("--precision") { Description = "Float32 (default) or Float64 arithmetic." };
    private readonly Option<double?> _tolerance = new("--tolerance")
    {
        Description = $"Relative residual ‖H'x − b‖/‖b‖ a solve must reach, in (0, 1); a solve above it writes nothing (default {SolverOptions.DefaultFloat32Tolerance:G1} in Float32, {SolverOptions.DefaultFloat64Tolerance:G1} in Float64).",
    };
    private readonly Option<int> _maxIterations = new("--max-iterations") { Description = "Iteration cap of cg (≥ 1).", DefaultValueFactory = _ => 2000 };
    private readonly Option<long> _memoryBudget = new("--memory-budget-mb") { Description = "Memory for the curvature rows, the Gram and read buffers, MiB: rows that do not fit are streamed from the cache files.", DefaultValueFactory = _ => 4096 };
    private readonly Option<RowResidency> _residency = new("--residency") { Description = "Auto (by the budget), Resident or Streamed." };
    private readonly Option<double> _lr = new("--llmeraser-lr") { Description = "llmeraser: Adam learning rate (x_lr).", DefaultValueFactory = _ => new LlmEraserOptions().LearningRate };
    private readonly Option<double> _init = new("--llmeraser-init") { Description = "llmeraser: initial value of every component (x_init).", DefaultValueFactory = _ => new LlmEraserOptions().InitialValue };
    private readonly Option<double> _decay = new("--llmeraser-weight-decay") { Description = "llmeraser: regularisation (x_adjust).", DefaultValueFactory = _ => new LlmEraserOptions().WeightDecay };
    private readonly Option<int> _iterations = new("--llmeraser-iterations") { Description = "llmeraser: Adam steps.", DefaultValueFactory = _ => new LlmEraserOptions().Iterations };
    private readonly Option<int> _batch = new("--llmeraser-batch") { Description = "llmeraser: rows per minibatch HVP.", DefaultValueFactory = _ => new LlmEraserOptions().BatchSize };

    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { _device, _precision, _tolerance, _maxIterations, _memoryBudget, _residency, _lr, _init, _decay, _iterations, _batch })
            command.Options.Add(option);
    }

    public ComputeOptions Compute(ParseResult parse) => new()
    {
        Device = parse.GetValue(_device)!,
        Precision = parse.GetValue(_precision),
        MemoryBudgetBytes = Math.Clamp(parse.GetValue(_memoryBudget), 0, long.MaxValue >> 20) << 20,
        Residency = parse.GetValue(_residency),
    };

    /// <summary>
    /// Refuses out-of-range values before any file is read, with the rules the engine and the worker apply
    /// (<see cref="SolverOptions.Problems"/>, <see cref="ComputeOptions.Problems"/>), each named by its option.
    /// </summary>
    public void Validate(ParseResult parse, SolverOptions solver, ComputeOptions compute)
    {
        var problems = new List<string>();
        long budget = parse.GetValue(_memoryBudget);
        if (budget < 1)
            problems.Add($"--memory-budget-mb must be at least 1 (got {budget}).");
        problems.AddRange(solver.Problems(OptionName));
        if (budget >= 1)
            problems.AddRange(compute.Problems(OptionName));
        if (problems.Count > 0)
            throw new UnlearningException(EraserWorker.Contracts.FailureCodes.InvalidRequest, string.Join(" ", problems));
    }

    /// <summary>The option a setting of <see cref="SolverOptions"/> or <see cref="ComputeOptions"/> is given by.</summary>
    private static string OptionName(string setting) => setting switch
    {
        nameof(SolverOptions.MaxIterations) => "--max-iterations",
        nameof(SolverOptions.Tolerance) => "--tolerance",
        nameof(SolverOptions.Damping) => "--damping",
        "LlmEraser.LearningRate" => "--llmeraser-lr",
        "LlmEraser.InitialValue" => "--llmeraser-init",
        "LlmEraser.WeightDecay" => "--llmeraser-weight-decay",
        "LlmEraser.Iterations" => "--llmeraser-iterations",
        "LlmEraser.BatchSize" => "--llmeraser-batch",
        nameof(ComputeOptions.Device) => "--device",
        nameof(ComputeOptions.Precision) => "--precision",
        nameof(ComputeOptions.MemoryBudgetBytes) => "--memory-budget-mb",
        nameof(ComputeOptions.Residency) => "--residency",
        _ => setting,
    };

    public SolverOptions Solver(ParseResult parse, SolverKind kind, double? damping) => new()
    {
        Solver = kind,
        Damping = damping,
        Tolerance = parse.GetValue(_tolerance),
        MaxIterations = parse.GetValue(_maxIterations),
        LlmEraser = new LlmEraserOptions
        {
            LearningRate = parse.GetValue(_lr),
            InitialValue = parse.GetValue(_init),
            WeightDecay = parse.GetValue(_decay),
            Iterations = parse.GetValue(_iterations),
            BatchSize = parse.GetValue(_batch),
        },
    };
}
