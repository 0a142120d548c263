using System.CommandLine;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Commands;

/// <summary>Options shared by the commands that compute an update: device, precision and solver knobs.</summary>
internal sealed class ComputeCliOptions
{
    private readonly Option<string> _device = new("--device") { Description = "auto | cpu | cuda | cuda:N", DefaultValueFactory = _ => "auto" };
    private readonly Option<ComputePrecision> _precision = new("--precision") { Description = "Float32 (default) or Float64 arithmetic." };
    private readonly Option<double?> _tolerance = new("--tolerance") { Description = "Target relative residual of cg and of direct's refinement." };
    private readonly Option<int> _maxIterations = new("--max-iterations") { Description = "Iteration cap of cg.", DefaultValueFactory = _ => 2000 };
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
        MemoryBudgetBytes = parse.GetValue(_memoryBudget) << 20,
        Residency = parse.GetValue(_residency),
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
