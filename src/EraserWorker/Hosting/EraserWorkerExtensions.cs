using EraserWorker.Components;
using EraserWorker.Components.Observability;
using EraserWorker.Demo;
using EraserWorker.Messaging;
using EraserWorker.Storage;
using EraserWorker.Storage.Blobs;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Prometheus;

namespace EraserWorker.Hosting;

public static class EraserWorkerExtensions
{
    /// <summary>Everything the worker needs: the components (options validated at start-up, the batch service), storage,
    /// messaging, metrics and health.</summary>
    public static WebApplicationBuilder AddEraserWorker(this WebApplicationBuilder builder)
    {
        var services = builder.Services;
        var configuration = builder.Configuration;

        services.AddOptions<HttpOptions>().Bind(configuration.GetSection(HttpOptions.SectionName)).ValidateDataAnnotations().ValidateOnStart();
        var http = configuration.GetSection(HttpOptions.SectionName).Get<HttpOptions>() ?? new HttpOptions();
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.ListenAnyIP(http.Port));

        services.AddEraserComponents(configuration);
        services.AddSingleton<IStorageMetrics, StorageMetricsAdapter>();
        services.AddEraserStorage(configuration);
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
