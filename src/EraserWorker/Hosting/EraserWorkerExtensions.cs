using EraserWorker.Core.Compute;
using EraserWorker.Demo;
using EraserWorker.Messaging;
using EraserWorker.Observability;
using EraserWorker.Storage;
using EraserWorker.Unlearning;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using Prometheus;

namespace EraserWorker.Hosting;

public static class EraserWorkerExtensions
{
    /// <summary>Everything the worker needs: options (validated at start-up), storage, compute, messaging, metrics, health.</summary>
    public static WebApplicationBuilder AddEraserWorker(this WebApplicationBuilder builder)
    {
        var services = builder.Services;
        var configuration = builder.Configuration;

        // The solver and compute settings are checked by the same rules as the CLI's options (SolverOptions.Problems,
        // ComputeOptions.Problems), named by their configuration keys.
        services.AddOptions<WorkerOptions>().Bind(configuration.GetSection(WorkerOptions.SectionName)).ValidateDataAnnotations()
            .ValidateProblems(o => o.SolverOptions().Problems(key => $"{WorkerOptions.SectionName}:{key}")).ValidateOnStart();
        services.AddOptions<ComputeOptions>().Bind(configuration.GetSection(ComputeOptions.SectionName))
            .ValidateProblems(o => o.Problems(key => $"{ComputeOptions.SectionName}:{key}")).ValidateOnStart();
        services.AddOptions<HttpOptions>().Bind(configuration.GetSection(HttpOptions.SectionName)).ValidateDataAnnotations().ValidateOnStart();

        var http = configuration.GetSection(HttpOptions.SectionName).Get<HttpOptions>() ?? new HttpOptions();
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.ListenAnyIP(http.Port));

        services.AddSingleton(TimeProvider.System);
        services.AddSingleton<EraserMetrics>();
        services.AddSingleton<IStorageMetrics, StorageMetricsAdapter>();
        // Security (docs/reliability.md): no plain HTTP to a remote blob endpoint; no SAS in published or logged URLs.
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<StorageOptions>>(new StorageTlsValidator(configuration)));
        services.TryAddSingleton<IBlobStore>(sp => new CredentialFreeUriBlobStore(StorageServiceCollectionExtensions.CreateBlobStore(
            sp.GetRequiredService<IOptions<StorageOptions>>().Value, sp.GetRequiredService<IStorageMetrics>())));
        services.AddEraserStorage(configuration);
        services.AddSingleton<WarmEngines>();
        services.AddSingleton<WarmModels>();
        services.AddSingleton<TextReplacementSets>();
        services.AddSingleton<AdapterUnlearningService>();
        services.AddEraserMessaging(configuration, bus => services.AddEraserDemo(configuration, bus));
        // Bounded: with the store down the SDK keeps retrying; readiness must answer "no" quickly (probes time out).
        services.AddHealthChecks().AddCheck<StorageHealthCheck>("storage", tags: ["ready"], timeout: TimeSpan.FromSeconds(3));
        services.AddHostedService<TransportSecurityReport>();
        return builder;
    }

    /// <summary><c>/metrics</c>, <c>/health/live</c> (the process answers) and <c>/health/ready</c> (broker and store reachable).</summary>
    public static WebApplication MapEraserEndpoints(this WebApplication app)
    {
        app.MapMetrics("/metrics");
        app.MapHealthChecks("/health/live", new() { Predicate = _ => false });
        // Degraded is "not ready" too: MassTransit reports a bus whose broker connection is lost as Degraded, which ASP.NET
        // Core would answer with 200.
        app.MapHealthChecks("/health/ready", new()
        {
            Predicate = check => check.Tags.Contains("ready"),
            ResultStatusCodes =
            {
                [HealthStatus.Healthy] = StatusCodes.Status200OK,
                [HealthStatus.Degraded] = StatusCodes.Status503ServiceUnavailable,
                [HealthStatus.Unhealthy] = StatusCodes.Status503ServiceUnavailable,
            },
        });
        return app;
    }
}

/// <summary>Options validation by a rule set that lists every problem as a sentence (shared with the CLI).</summary>
internal static class OptionsProblems
{
    public static OptionsBuilder<T> ValidateProblems<T>(this OptionsBuilder<T> builder, Func<T, IReadOnlyList<string>> problems) where T : class
    {
        builder.Services.AddSingleton<IValidateOptions<T>>(new Validator<T>(builder.Name, problems));
        return builder;
    }

    private sealed class Validator<T>(string? name, Func<T, IReadOnlyList<string>> problems) : IValidateOptions<T> where T : class
    {
        public ValidateOptionsResult Validate(string? optionsName, T options)
        {
            if (name is not null && name != optionsName)
                return ValidateOptionsResult.Skip;
            var found = problems(options);
            return found.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(found);
        }
    }
}

internal sealed class StorageMetricsAdapter(EraserMetrics metrics) : IStorageMetrics
{
    public void BytesTransferred(string direction, long bytes)
    {
        if (direction == StorageDirections.Download)
            metrics.BlobRead(bytes);
        else if (direction == StorageDirections.Upload)
            metrics.BlobWritten(bytes);
    }
}

internal sealed class StorageHealthCheck(IBlobStore store) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        await store.IsReachableAsync(cancellationToken) ? HealthCheckResult.Healthy() : HealthCheckResult.Unhealthy("blob store unreachable");
}
