using EraserWorker.Contracts;

namespace EraserWorker.Core.Influence;

/// <summary>
/// The rule that decides whether a solve may become a version (worker) or an output adapter (CLI): an erasure
/// service must never report an update that is not the solution of its system. A solve is accepted only when its
/// true relative residual ‖H'x − b‖/‖b‖ (recomputed in float64, never the recursion's estimate) is at most the
/// tolerance, every value of the update is finite and — for a non-empty edit set — the update is not zero.
/// Anything else is <c>NumericalFailure</c>, with the figures and what to change.
/// </summary>
public static class SolveAcceptance
{
    /// <summary>Throws <see cref="UnlearningException"/> (<c>NumericalFailure</c>) unless the solve is accepted.</summary>
    /// <param name="finite">True when every component of the update is finite.</param>
    /// <param name="requireConvergence">False only for comparison runs of the evaluation (<see cref="SolverOptions.RequireConvergence"/>).</param>
    public static void Ensure(SolverReport report, double tolerance, bool finite, double updateNorm, int editedSamples, bool requireConvergence = true)
    {
        if (!finite || !double.IsFinite(report.RelativeResidual) || !double.IsFinite(updateNorm))
            throw new UnlearningException(FailureCodes.NumericalFailure,
                $"The {report.Solver} solver produced non-finite values after {report.Iterations} iteration(s) (damping {report.Damping:G4}); " +
                "nothing was written. Increase the damping or use the direct solver.") { Report = report };
        if (requireConvergence && !(report.RelativeResidual <= tolerance))
            throw new UnlearningException(FailureCodes.NumericalFailure,
                $"The {report.Solver} solver stopped at relative residual {report.RelativeResidual:G3} after {report.Iterations} iteration(s), " +
                $"above the tolerance {tolerance:G3}: the update is not the solution, so nothing was written. " +
                "Raise the iteration cap (--max-iterations, Eraser:Worker:MaxIterations), increase the damping, or use the direct solver.") { Report = report };
        if (editedSamples > 0 && updateNorm == 0)
            throw new UnlearningException(FailureCodes.NumericalFailure,
                $"The update is zero although {editedSamples} sample(s) are edited: their gradient rows contribute nothing (b = 0), " +
                "so nothing would be forgotten; nothing was written. Check the gradient cache.") { Report = report };
    }
}
