using TorchSharp;

namespace EraserWorker.Core.Influence.Solvers;

internal sealed record SolveContext(
    SolverOptions Options,
    double Tolerance,
    long MemoryBudgetBytes,
    IProgress<EngineProgress>? Progress,
    CancellationToken Cancellation);

/// <param name="RelativeResidual">The float64 relative residual of <paramref name="X"/> when the solver already computed it.</param>
internal sealed record SolveOutcome(torch.Tensor X, int Iterations, string Method, double? RelativeResidual = null);

/// <summary>Solves H'x = b for one edited problem. Tensors it creates belong to the caller's dispose scope.</summary>
internal interface ISolver
{
    SolveOutcome Solve(EditedProblem problem, SolveContext context);
}
