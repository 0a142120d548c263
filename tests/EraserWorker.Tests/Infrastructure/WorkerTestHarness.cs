using EraserWorker.Components.Messaging;
using EraserWorker.Messaging;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace EraserWorker.Tests.Infrastructure;

public static class WorkerTestHarness
{
    /// <summary>MassTransit's in-memory test harness with the worker's consumer and the SPEC §3 topology, for tests
    /// that host the real worker composition in-process.</summary>
    public static IServiceCollection AddWorkerTestHarness(this IServiceCollection services) =>
        services.AddMassTransitTestHarness(x =>
        {
            x.SetTestTimeouts(testTimeout: TimeSpan.FromMinutes(2), testInactivityTimeout: TimeSpan.FromSeconds(30));
            x.AddConsumer<UnlearningRequestedConsumer, UnlearningRequestedConsumerDefinition>();
            x.UsingInMemory((context, cfg) =>
            {
                MessagingExtensions.ConfigureTopology(cfg);
                cfg.ConfigureEndpoints(context);
            });
        });
}
