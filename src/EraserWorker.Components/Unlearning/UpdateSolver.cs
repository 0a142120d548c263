using EraserWorker.Components.Observability;
using EraserWorker.Components.Warm;
using EraserWorker.Contracts;
using EraserWorker.Core.Influence;

namespace EraserWorker.Components.Unlearning;

/// <summary>The solve of a batch: the requests that were solved together (all, or those left after isolation), their
/// update, and the requests that failed alone.</summary>
public sealed record BatchSolve(IReadOnlyList<PendingRequest> Applied, UnlearningUpdate? Update, IReadOnlyList<UnlearningFailed> Failed);

/// <summary>
/// One solve per adapter per batch, from the base with the cumulative edit set (SPEC §1), accepted only when it meets its
/// tolerance (<see cref="SolveAcceptance"/>). A bad request fails alone (SPEC §3): when the batch's solve fails, each
/// request is solved alone on top of the head's edits, those that fail alone get their failure, and the others are solved
/// together again.
/// </summary>
public sealed class UpdateSolver(EraserMetrics metrics, ILogger<UpdateSolver> logger)
{
    public BatchSolve Solve(WarmAdapter warm, EditSet headEdits, IReadOnlyList<PendingRequest> accepted, SolverOptions options,
        CancellationToken cancellation)
    {
        var attempt = TrySolve(warm, EditSets.Apply(headEdits, accepted), options, cancellation);
        if (attempt.Update is not null)
            return new BatchSolve(accepted, attempt.Update, []);
        var (code, error) = attempt.Failure!.Value;
        logger.LogError(error, "Solve failed for {AdapterId}: {Code}", warm.AdapterId, code);
        if (accepted.Count == 1)
            return new BatchSolve([], null, [Failures.Of(accepted[0].Request, code, error)]);

        var failed = new List<UnlearningFailed>();
        var alone = new List<PendingRequest>();
        foreach (var item in accepted)
        {
            var single = TrySolve(warm, EditSets.Apply(headEdits, item.Request), options, cancellation);
            if (single.Failure is var (singleCode, singleError))
                failed.Add(Failures.Of(item.Request, singleCode, singleError));
            else
                alone.Add(item);
        }
        if (alone.Count == 0 || alone.Count == accepted.Count)
            return new BatchSolve([], null, [.. failed, .. alone.Select(a => Failures.Of(a.Request, code, error))]);
        logger.LogWarning("{Failed} request(s) of the batch for {AdapterId} fail alone; solving the other {Count} again",
            failed.Count, warm.AdapterId, alone.Count);
        var again = TrySolve(warm, EditSets.Apply(headEdits, alone), options, cancellation);
        return again.Update is not null
            ? new BatchSolve(alone, again.Update, failed)
            : new BatchSolve([], null, [.. failed, .. alone.Select(a => Failures.Of(a.Request, again.Failure!.Value.Code, again.Failure.Value.Error))]);
    }

    /// <summary>One solve; a permanent failure (the solver's refusal, unusable rows) is returned, anything else propagates.</summary>
    private (UnlearningUpdate? Update, (string Code, Exception Error)? Failure) TrySolve(WarmAdapter warm, EditSet edits, SolverOptions options,
        CancellationToken cancellation)
    {
        try
        {
            var update = warm.Engine.Compute(edits, warm.Replacements, options, null, cancellation);
            metrics.ObserveSolve(update.Report.Solver, update.Report.Seconds, update.Report.Iterations, update.Report.RelativeResidual);
            return (update, null);
        }
        catch (Exception e) when (InputValidation.CodeOf(e) is { } code)
        {
            if (e is UnlearningException { Report: { } rejected })
                metrics.SolveRejected(rejected.Solver);
            return (null, (code, e));
        }
    }
}
