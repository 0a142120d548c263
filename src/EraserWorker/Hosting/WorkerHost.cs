using EraserWorker.Demo;
using Microsoft.Extensions.Options;

namespace EraserWorker.Hosting;

/// <summary>
/// Builds and runs the worker, and turns how it stopped into the process exit code that containers and systemd act on:
/// 0 after a requested shutdown (Ctrl+C, SIGTERM); 1 when it could not start (invalid configuration, unreachable broker
/// at start-up) or when a background service failed and stopped the host.
/// </summary>
public static class WorkerHost
{
    public static async Task<int> RunAsync(string[] args)
    {
        WebApplication app;
        try
        {
            var builder = WebApplication.CreateBuilder(DemoMode.Expand(args));
            builder.AddEraserWorker();
            app = builder.Build();
            app.MapEraserEndpoints();
        }
        catch (Exception e)
        {
            // Logging is not set up yet: one line on standard error.
            await Console.Error.WriteLineAsync($"EraserWorker: cannot start: {Describe(e)}");
            return 1;
        }

        // RunAsync disposes the service provider when the host has stopped: take what is inspected afterwards now.
        var logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("EraserWorker");
        var background = app.Services.GetServices<IHostedService>().OfType<BackgroundService>().ToList();
        try
        {
            await app.RunAsync();
        }
        catch (Exception e)
        {
            logger.LogCritical(e, "The worker stopped: {Reason}", Describe(e));
            await Console.Error.WriteLineAsync($"EraserWorker: stopped: {Describe(e)}");
            return 1;
        }
        var failed = background.Where(s => s.ExecuteTask is { IsFaulted: true }).ToList();
        foreach (var service in failed)
            await Console.Error.WriteLineAsync(
                $"EraserWorker: stopped because {service.GetType().Name} failed: {Describe(service.ExecuteTask!.Exception!.GetBaseException())}");
        return failed.Count == 0 ? 0 : 1;
    }

    private static string Describe(Exception e) => e switch
    {
        OptionsValidationException v => "invalid configuration: " + string.Join(" ", v.Failures),
        AggregateException a when a.InnerExceptions.Count > 0 => string.Join(" ", a.InnerExceptions.Select(Describe)),
        _ => e.Message,
    };
}
