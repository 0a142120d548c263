using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using EraserWorker.Cli.Operator;
using EraserWorker.Cli.Output;
using EraserWorker.Contracts;

namespace EraserWorker.Cli.Commands;

/// <summary>
/// <c>eraser submit</c> (SPEC §6): publish one unlearning request through the configured transport, as plain JSON on
/// <c>eraser.unlearning-requested</c>; optionally wait for its completion or failure event.
/// </summary>
public static class SubmitCommand
{
    /// <summary>The message printed when <c>Eraser:Transport:Kind</c> is <c>InMemory</c>.</summary>
    public const string InMemoryMessage =
        "submit needs Eraser:Transport:Kind=RabbitMq: the InMemory transport exists only inside the worker process, so no other process can publish to it. " +
        "Set Eraser__Transport__Kind=RabbitMq (and Eraser__Transport__Host, Port, VirtualHost, Username, Password as the worker has them) or pass the worker's settings with --config.";

    public static Command Create()
    {
        var config = OperatorSettings.CreateConfigOption();
        var adapterId = new Option<string>("--adapter-id") { Description = "The adapter (e.g. tenant-a/support-bot).", Required = true };
        var task = new Option<string>("--task") { Description = "remove | modifyQuery | correctResponse", Required = true };
        task.CompletionSources.Add(UnlearningTasks.All.ToArray());
        var samples = new Option<string[]>("--sample")
        {
            Description = "Sample ids, comma-separated; may be repeated.",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var sampleFile = new Option<string?>("--sample-file") { Description = "File with one sample id per line (for ids that contain commas)." };
        var replacementsUri = new Option<string?>("--replacements-uri") { Description = "For modifyQuery / correctResponse: the URI printed by 'eraser replacements upload'." };
        var replacementsJsonl = new Option<string?>("--replacements-jsonl")
        {
            Description = "For modifyQuery / correctResponse on an adapter registered with its model: the corrected samples as text, one JSON object " +
                          "{\"id\", \"prompt\", \"response\"} a line; the worker computes their rows. Without --sample/--sample-file the sample ids are the file's ids.",
        };
        var requestId = new Option<string?>("--request-id") { Description = "Idempotency key, 1–128 printable ASCII characters (default: a new GUID)." };
        var wait = new Option<bool>("--wait") { Description = "Wait for the request's completion or failure event, print it as JSON; exit 1 on failure or timeout." };
        var timeout = new Option<double>("--timeout") { Description = "With --wait: seconds to wait (default 300).", DefaultValueFactory = _ => 300 };

        var command = new Command("submit", "Publish an unlearning request to the worker through the configured transport (Eraser:Transport, RabbitMq).")
        {
            config, adapterId, task, samples, sampleFile, replacementsUri, replacementsJsonl, requestId, wait, timeout,
        };
        command.SetAction((parse, cancellation) => OperatorRun.RunAsync(parse, cancellation, async io =>
        {
            var texts = parse.GetValue(replacementsJsonl) is { } textFile ? SubmitText.ParseReplacements(textFile) : null;
            var sampleIds = SubmitText.ParseSampleIds(parse.GetValue(samples) ?? [], parse.GetValue(sampleFile));
            if (sampleIds.Count == 0 && texts is not null)
                sampleIds = texts.Select(t => t.Id).ToList();
            var request = new UnlearningRequested(
                parse.GetValue(requestId) ?? Guid.NewGuid().ToString("D"),
                parse.GetValue(adapterId)!,
                parse.GetValue(task)!,
                sampleIds,
                parse.GetValue(replacementsUri),
                texts);
            bool waitForOutcome = parse.GetValue(wait);
            double seconds = parse.GetValue(timeout);
            if (waitForOutcome && !(seconds > 0 && seconds <= TimeSpan.MaxValue.TotalSeconds / 2))
                throw new CliFailure($"--timeout must be a positive number of seconds (got {seconds.ToString(CultureInfo.InvariantCulture)}).");

            var configuration = OperatorSettings.Load(parse.GetValue(config));
            var problems = RequestValidation.Validate(request, OperatorSettings.MaxSampleIdsPerRequest(configuration),
                OperatorSettings.MaxReplacementTextLength(configuration));
            if (problems.Count > 0)
                throw new CliFailure("invalid request: " + string.Join(" ", problems));
            var transport = OperatorSettings.Transport(configuration);
            if (transport.Kind != CliTransportKind.RabbitMq)
                throw new CliFailure(InMemoryMessage);

            await using var submitter = await RabbitMqSubmitter.ConnectAsync(transport, cancellation);
            if (waitForOutcome)
                await submitter.ListenForAsync(request.RequestId, cancellation);
            await submitter.PublishAsync(request, cancellation);
            string what = $"request {request.RequestId} ({request.Task}, {request.SampleIds.Count} sample(s)) for adapter {request.AdapterId}";
            if (!waitForOutcome)
            {
                io.Status($"Published {what} to {ExchangeNames.UnlearningRequested} at {transport.Describe()}");
                io.Out.WriteLine(request.RequestId);
                return 0;
            }

            io.Status($"Published {what} to {ExchangeNames.UnlearningRequested} at {transport.Describe()}; waiting up to {seconds.ToString(CultureInfo.InvariantCulture)} s for its outcome");
            var outcome = await submitter.WaitAsync(TimeSpan.FromSeconds(seconds), cancellation)
                ?? throw new CliFailure($"no completion or failure event for request {request.RequestId} within {seconds.ToString(CultureInfo.InvariantCulture)} s; it was delivered and may still be processed (see 'eraser adapters show --id {request.AdapterId}').");
            io.Out.WriteLine(SubmitText.Compact(outcome.Body));
            if (outcome.Completed)
            {
                io.Status($"Completed: adapter {request.AdapterId} version {outcome.Body["version"]?.ToJsonString() ?? "?"}");
                return 0;
            }
            string code = Text(outcome.Body, "code") ?? "failed";
            throw new CliFailure($"{code}: {Text(outcome.Body, "message") ?? "(no message)"}");
        }));
        return command;
    }

    private static string? Text(JsonObject body, string key) =>
        body[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;
}
