using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using EraserWorker.Components;
using EraserWorker.Hosting;
using EraserWorker.Storage;
using MassTransit;

namespace EraserWorker.Demo;

/// <summary><c>Eraser:Demo</c>: the newcomer's tour on embedded defaults (see README, "Try it").</summary>
public sealed class DemoOptions
{
    public const string SectionName = "Eraser:Demo";

    public bool Enabled { get; set; }
    public string AdapterId { get; set; } = "demo/support-bot";
    public TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(2);
    /// <summary>Requests to publish; 0 publishes until stopped.</summary>
    public int Requests { get; set; } = 0;
}

public static class DemoMode
{
    /// <summary>Lets <c>--demo</c> stand for <c>--Eraser:Demo:Enabled=true</c>.</summary>
    public static string[] Expand(string[] args) =>
        args.Select(a => a == "--demo" ? $"--{DemoOptions.SectionName}:Enabled=true" : a).ToArray();

    public static IServiceCollection AddEraserDemo(this IServiceCollection services, IConfiguration configuration, IBusRegistrationConfigurator bus)
    {
        services.AddOptions<DemoOptions>().Bind(configuration.GetSection(DemoOptions.SectionName));
        if (configuration.GetSection(DemoOptions.SectionName).Get<DemoOptions>()?.Enabled != true)
            return services;
        bus.AddConsumer<DemoCompletionObserver>();
        bus.AddConsumer<DemoFailureObserver>();
        bus.AddConsumer<DemoVersionObserver>();
        services.AddHostedService<DemoPublisher>();
        return services;
    }
}

/// <summary>Registers a small ridge-regression adapter (exact by construction) and publishes requests at a steady pace.</summary>
internal sealed class DemoPublisher(AdapterStore store, IBus bus, Microsoft.Extensions.Options.IOptions<DemoOptions> options,
    Microsoft.Extensions.Options.IOptions<HttpOptions> http, Microsoft.Extensions.Options.IOptions<WorkerOptions> worker,
    ILogger<DemoPublisher> logger) : BackgroundService
{
    private const int Samples = 400;
    private const string CorrectionsName = "corrections-1";

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var o = options.Value;
        string adapterId = o.AdapterId;
        if (await store.GetHeadAsync(adapterId, stoppingToken) is null)
        {
            var folder = Path.Combine(worker.Value.WorkDirectory, "demo-source");
            if (Directory.Exists(folder))
                Directory.Delete(folder, recursive: true);
            WriteDemoAdapter(folder);
            await store.RegisterAsync(adapterId, Path.Combine(folder, "adapter"), Path.Combine(folder, "cache"), stoppingToken);
            logger.LogInformation("Demo: registered adapter {AdapterId} ({Samples} training samples)", adapterId, Samples);
        }
        var corrections = Path.Combine(worker.Value.WorkDirectory, "demo-corrections");
        if (Directory.Exists(corrections))
            Directory.Delete(corrections, recursive: true);
        WriteCorrections(corrections);
        string replacementsUri;
        try
        {
            replacementsUri = await store.UploadReplacementsAsync(adapterId, CorrectionsName, corrections, stoppingToken);
        }
        catch (ReplacementsExistException)
        {
            // An earlier demo run uploaded it; the corrections are deterministic, so it holds the same rows.
            replacementsUri = RequestValidation.FormatReplacementsUri(adapterId, CorrectionsName);
        }
        logger.LogInformation("Demo: publishing a request every {Interval}s; metrics at http://localhost:{Port}/metrics; versions under the store's adapters/{AdapterId}/versions",
            o.Interval.TotalSeconds, http.Value.Port, adapterId);

        // Seeded by the head's version, so a later run picks other samples than the one before it (re-removing a sample
        // is a no-op: its version would equal its parent).
        var random = new Random(42 + ((await store.GetHeadAsync(adapterId, stoppingToken))?.Version ?? 0));
        for (int i = 1; o.Requests == 0 || i <= o.Requests; i++)
        {
            await Task.Delay(o.Interval, stoppingToken);
            var request = i % 5 == 0
                ? new UnlearningRequested($"demo-{Guid.NewGuid():N}", adapterId, UnlearningTasks.CorrectResponse, [$"sample-{random.Next(0, 20):D4}"], replacementsUri)
                : new UnlearningRequested($"demo-{Guid.NewGuid():N}", adapterId, UnlearningTasks.Remove, [$"sample-{random.Next(20, Samples):D4}"], null);
            await bus.Publish(request, stoppingToken);
            logger.LogInformation("Demo: published {Task} of {Samples} as {RequestId}", request.Task, string.Join(",", request.SampleIds), request.RequestId);
        }
    }

    private static readonly IReadOnlyList<ParameterSpec> Parameters =
    [
        new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", [8, 64]),
        new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", [64, 8]),
    ];

    private static void WriteDemoAdapter(string folder)
    {
        int p = Parameters.Sum(s => (int)s.Count);
        var random = new Random(7);
        var x = Enumerable.Range(0, Samples).Select(_ => Enumerable.Range(0, p).Select(_ => random.NextDouble() * 2 - 1).ToArray()).ToArray();
        var r = Enumerable.Range(0, Samples).Select(_ => random.NextDouble() - 0.5).ToArray();
        // θ₀ = −Σ rᵢxᵢ / l2 is the exact ridge minimiser when the residuals at θ₀ are r (l2 = 1).
        var theta = new double[p];
        for (int i = 0; i < Samples; i++)
            for (int j = 0; j < p; j++)
                theta[j] -= r[i] * x[i][j];
        Directory.CreateDirectory(Path.Combine(folder, "adapter"));
        File.WriteAllText(Path.Combine(folder, "adapter", StoredFileNames.AdapterConfig),
            "{\n  \"peft_type\": \"LORA\",\n  \"r\": 8,\n  \"lora_alpha\": 16,\n  \"target_modules\": [\"q_proj\"]\n}\n");
        var tensors = new List<(string, string, IReadOnlyList<long>, ReadOnlyMemory<byte>)>();
        int offset = 0;
        foreach (var spec in Parameters)
        {
            var bytes = new byte[spec.Count * 4];
            for (int k = 0; k < spec.Count; k++)
                BitConverter.TryWriteBytes(bytes.AsSpan(4 * k), (float)theta[offset + k]);
            tensors.Add((spec.Name, "F32", spec.Shape, bytes));
            offset += (int)spec.Count;
        }
        using (var file = File.Create(Path.Combine(folder, "adapter", StoredFileNames.AdapterWeights)))
            SafetensorsWriter.Write(file, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        using var writer = GradientCacheWriter.Create(Path.Combine(folder, "cache"), Parameters, 1.0, "F16", true, 128);
        for (int i = 0; i < Samples; i++)
            writer.Append($"sample-{i:D4}", x[i].Select(v => r[i] * v).ToArray(), x[i]);
        writer.Complete();
    }

    private static void WriteCorrections(string folder)
    {
        int p = Parameters.Sum(s => (int)s.Count);
        var random = new Random(11);
        using var writer = GradientCacheWriter.Create(folder, Parameters, 1.0, "F16", true, 64);
        for (int i = 0; i < 20; i++)
        {
            var x = Enumerable.Range(0, p).Select(_ => random.NextDouble() * 2 - 1).ToArray();
            double residual = random.NextDouble() - 0.5;
            writer.Append($"sample-{i:D4}", x.Select(v => residual * v).ToArray(), x);
        }
        writer.Complete();
    }
}

/// <summary>Logs completions as a subscriber of <c>eraser.unlearning-completed</c> would see them. Events are plain
/// JSON without a type envelope, so each event type gets its own consumer (and queue, bound to its one exchange).</summary>
internal sealed class DemoCompletionObserver(ILogger<DemoCompletionObserver> logger) : IConsumer<UnlearningCompleted>
{
    public Task Consume(ConsumeContext<UnlearningCompleted> context)
    {
        var m = context.Message;
        logger.LogInformation("Demo: ✔ {RequestId} → {AdapterId} v{Version} ({Solver}, residual {Residual:E1})",
            m.RequestId, m.AdapterId, m.Version, m.Solver.Name, m.Solver.RelativeResidual);
        return Task.CompletedTask;
    }
}

internal sealed class DemoFailureObserver(ILogger<DemoFailureObserver> logger) : IConsumer<UnlearningFailed>
{
    public Task Consume(ConsumeContext<UnlearningFailed> context)
    {
        logger.LogWarning("Demo: ✘ {RequestId}: {Code} {Reason}", context.Message.RequestId, context.Message.Code, context.Message.Message);
        return Task.CompletedTask;
    }
}

internal sealed class DemoVersionObserver(ILogger<DemoVersionObserver> logger) : IConsumer<AdapterVersionPublished>
{
    public Task Consume(ConsumeContext<AdapterVersionPublished> context)
    {
        logger.LogInformation("Demo: new version {AdapterId} v{Version} at {Uri}", context.Message.AdapterId, context.Message.Version, context.Message.AdapterUri);
        return Task.CompletedTask;
    }
}
