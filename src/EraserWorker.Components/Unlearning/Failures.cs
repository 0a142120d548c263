using EraserWorker.Contracts;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;

namespace EraserWorker.Components.Unlearning;

/// <summary>
/// The one mapping from what went wrong to SPEC §3's failure events. A permanent failure — retrying the same request cannot
/// help — has a code and fails its requests alone; anything else (storage or broker unreachable) is transient: the batch is
/// retried by MassTransit and, when the retries run out, its requests are answered with <c>RetriesExhausted</c>.
/// </summary>
public static class Failures
{
    /// <summary>The failure code of a permanent error, or null for a transient one:
    /// <list type="bullet">
    /// <item>the solver refused the problem, or the input validation did (<see cref="UnlearningException"/>: its code);</item>
    /// <item>the stored adapter, cache or replacement set is malformed or does not match (<c>InvalidCache</c>);</item>
    /// <item>a replacement set named by the request is not in the store (<c>ReplacementMissing</c>), the adapter is not
    /// registered (<c>UnknownAdapter</c>);</item>
    /// <item>an argument was refused, e.g. a replacementsUri of another adapter (<c>InvalidRequest</c>: deterministic).</item>
    /// </list></summary>
    public static string? PermanentCode(Exception e) => e switch
    {
        ReplacementsNotFoundException => FailureCodes.ReplacementMissing,
        AdapterNotFoundException => FailureCodes.UnknownAdapter,
        _ when InputValidation.CodeOf(e) is { } code => code,
        ArgumentException => FailureCodes.InvalidRequest,
        _ => null,
    };

    /// <summary>The code of a batch given up after its last retry: <c>RetriesExhausted</c> for what retrying could have cured
    /// (storage, broker, network, timeouts, head conflicts), <c>InternalError</c> for anything else (a bug).</summary>
    public static string GiveUpCode(Exception e) => e switch
    {
        IOException or TimeoutException or HttpRequestException or OperationCanceledException or InvalidOperationException
            or Azure.RequestFailedException or MassTransit.MassTransitException => FailureCodes.RetriesExhausted,
        _ when e.GetType().Namespace?.StartsWith("RabbitMQ", StringComparison.Ordinal) == true => FailureCodes.RetriesExhausted,
        _ => FailureCodes.InternalError,
    };

    /// <summary>A failure event; the ids are echoed as received but cut to their maximum lengths (128 and 200 characters), so
    /// an oversized hostile id never grows the event.</summary>
    public static UnlearningFailed Of(UnlearningRequested request, string code, string message) =>
        new(Cut(request.RequestId, RequestValidation.MaxRequestIdLength), Cut(request.AdapterId, RequestValidation.MaxAdapterIdLength), code, message);

    /// <summary>The failure event of an exception with a permanent code.</summary>
    public static UnlearningFailed Of(UnlearningRequested request, string code, Exception e) => Of(request, code, e.Message);

    /// <summary>A sample id as messages quote it: cut to 64 characters.</summary>
    public static string Quote(string id) => $"'{(id.Length > 64 ? id[..64] + "…" : id)}'";

    private static string Cut(string? value, int max) => value is null ? "" : value.Length <= max ? value : value[..max];
}
