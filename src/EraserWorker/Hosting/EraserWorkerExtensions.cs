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

        services.AddOptions<WorkerOptions>().Bind(configuration.GetSection(WorkerOptions.SectionName)).ValidateDataAnnotations().ValidateOnStart();
        services.AddOptions<ComputeOptions>().Bind(configuration.GetSection(ComputeOptions.SectionName)).ValidateDataAnnotations().ValidateOnStart();
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
