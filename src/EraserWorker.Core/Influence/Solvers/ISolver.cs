using TorchSharp;

namespace EraserWorker.Core.Influence.Solvers;

internal sealed record SolveContext(
    SolverOptions Options,
    double Tolerance,
    long MemoryBudgetBytes,
    IProgress<EngineProgress>? Progress,
    CancellationToken Cancellation);

internal sealed record SolveOutcome(torch.Tensor X, int Iterations, string Method);

/// <summary>Solves H'x = b for one edited problem. Tensors it creates belong to the caller's dispose scope.</summary>
internal interface ISolver
{
    SolveOutcome Solve(EditedProblem problem, SolveContext context);
}
