using EraserWorker.Contracts;
using EraserWorker.Components.Warm;
using EraserWorker.Core.Influence;

namespace EraserWorker.Components.Unlearning;

/// <summary>
/// A new request checked against its warm adapter before any work, as <c>eraser unlearn</c> checks its inputs
/// (<see cref="InputValidation"/>): a replacement set of the cache's layout, known sample ids, rows for every id, finite
/// values in the rows the request brings in. The rows are read now, while the request can still fail alone.
/// </summary>
public sealed class RequestChecks(ReplacementSetLoader sets)
{
    /// <summary>The request's failure, or null when it can be applied.</summary>
    public async Task<UnlearningFailed?> CheckAsync(WarmAdapter warm, UnlearningRequested request, CancellationToken cancellation)
    {
        try
        {
            if (UnlearningTasks.NeedsReplacements(request.Task))
            {
                if (string.IsNullOrEmpty(request.ReplacementsUri))
                    return Failures.Of(request, FailureCodes.InvalidRequest, $"Task '{request.Task}' needs a replacementsUri.");
                string label = $"'{request.ReplacementsUri}'";
                var set = await sets.GetAsync(warm, request.ReplacementsUri, cancellation);
                if (set is null)
                    return Failures.Of(request, FailureCodes.ReplacementMissing, $"No replacement set at {label}.");
                InputValidation.SamplesKnown(request.SampleIds, warm.Engine.Cache);
                InputValidation.ReplacementRowsPresent(request.SampleIds, set, label);
                InputValidation.RowsFinite(set, request.SampleIds, $"Replacement set {label}");
            }
            else
            {
                InputValidation.SamplesKnown(request.SampleIds, warm.Engine.Cache);
            }
            return null;
        }
        catch (UnlearningException e)
        {
            return Failures.Of(request, e.Code, e.Message);
        }
    }
}
