using System.CommandLine;
using System.Text.Json;
using EraserWorker.Core.Influence;
using EraserWorker.Storage;
using Microsoft.Extensions.Options;
using RabbitMQ.Client.Exceptions;

namespace EraserWorker.Cli.Output;

/// <summary>One-line JSON for standard output, without escaping of '+', quotes or non-ASCII letters (still valid JSON).</summary>
public static class OperatorJson
{
    private static readonly JsonSerializerOptions Options = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = false,
    };

    public static string Line(System.Text.Json.Nodes.JsonNode node) => node.ToJsonString(Options);
}

/// <summary>A failure whose message is already written for the operator (printed as <c>eraser: message</c>).</summary>
public sealed class CliFailure(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The two streams of an operator command: machine output and status lines.</summary>
/// <param name="Out">Standard output: only what a script reads (URIs, ids, JSON).</param>
/// <param name="Error">Standard error: progress and status lines, and the one failure line.</param>
public sealed record CommandIo(TextWriter Out, TextWriter Error)
{
    /// <summary>A status line on standard error.</summary>
    public void Status(string line) => Error.WriteLine(line);
}

/// <summary>
/// Runs an operator command (<c>adapters</c>, <c>replacements</c>, <c>submit</c>): output goes to the invocation's
/// <see cref="InvocationConfiguration.Output"/> / <see cref="InvocationConfiguration.Error"/> (the console unless a
/// caller passes others). Failures propagate to <see cref="EraserCommandLine.RunAsync"/> (one line, exit 1).
/// </summary>
public static class OperatorRun
{
    public static Task<int> RunAsync(ParseResult parse, CancellationToken cancellation, Func<CommandIo, Task<int>> action)
    {
        _ = cancellation;
        return action(new CommandIo(parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error));
    }
}

/// <summary>The operator's view of a failure: one line, <c>eraser: …</c>, with the context that makes it actionable.</summary>
public static class CliFailures
{
    /// <summary>Writes the failure line and returns the exit code (130 when cancelled, else 1).</summary>
    public static int Report(Exception e, TextWriter error)
    {
        if (e is OperationCanceledException && e is not TimeoutException && IsCancellation(e))
        {
            error.WriteLine("eraser: cancelled");
            return 130;
        }
        error.WriteLine("eraser: " + OneLine(Describe(e)));
        return 1;
    }

    private static bool IsCancellation(Exception e) => e is OperationCanceledException { CancellationToken.IsCancellationRequested: true };

    internal static string Describe(Exception e) => e switch
    {
        CliFailure f => f.Message,
        OptionsValidationException v => "invalid configuration: " + string.Join(" ", v.Failures.Select(Plain)),
        UnlearningException u => $"{u.Code}: {u.Message}",
        BrokerUnreachableException b => "cannot reach RabbitMQ: " + (b.InnerException?.Message ?? b.Message),
        OperationInterruptedException o => "RabbitMQ closed the channel: " + o.Message,
        AdapterStoreException or IOException or ArgumentException or InvalidOperationException or UnauthorizedAccessException or JsonException
            or NotSupportedException => e.Message,
        Azure.RequestFailedException r => $"blob storage request failed ({r.Status}{(r.ErrorCode is null ? "" : " " + r.ErrorCode)}): {FirstLine(r.Message)}",
        AggregateException a when a.InnerExceptions.Count > 0 => string.Join("; ", a.InnerExceptions.Select(Describe).Distinct()),
        OperationCanceledException => "timed out: " + e.Message,
        _ => $"internal error ({e.GetType().Name}): {e.Message}",
    };

    /// <summary>"DataAnnotation validation failed for 'T' members: 'M' with the error: 'E'." → "E" (the options'
    /// messages already name their configuration keys).</summary>
    internal static string Plain(string failure)
    {
        var m = System.Text.RegularExpressions.Regex.Match(failure, "^DataAnnotation validation failed for '[^']*' members: '[^']*' with the error: '(.*)'\\.$",
            System.Text.RegularExpressions.RegexOptions.Singleline);
        return m.Success ? m.Groups[1].Value : failure;
    }

    private static string FirstLine(string message)
    {
        int end = message.IndexOfAny(['\r', '\n']);
        return end < 0 ? message : message[..end];
    }

    /// <summary>Line breaks and tabs (System.CommandLine lists choices with tabs) become single spaces.</summary>
    internal static string OneLine(string message) => System.Text.RegularExpressions.Regex.Replace(message, @"\s+", " ").Trim();
}
