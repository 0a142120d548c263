using EraserWorker.Components.Observability;
using EraserWorker.Components.Unlearning;
using EraserWorker.Components.Warm;
using EraserWorker.Core.Compute;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace EraserWorker.Components;

/// <summary>Dependency-injection registration of the worker's components.</summary>
public static class ComponentsServiceCollectionExtensions
{
    /// <summary>
    /// <c>Eraser:Worker</c> and <c>Eraser:Compute</c> (bound, validated at start-up by the same rules as the CLI's options:
    /// <see cref="Core.Influence.SolverOptions.Problems"/>, <see cref="ComputeOptions.Problems"/>, named by their keys), the
    /// metrics, the warm adapters and models, and the batch service with its rooms. The consumer is registered with the bus
    /// (the host's messaging).
    /// </summary>
    public static IServiceCollection AddEraserComponents(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<WorkerOptions>().Bind(configuration.GetSection(WorkerOptions.SectionName)).ValidateDataAnnotations()
            .ValidateProblems(o => o.SolverOptions().Problems(key => $"{WorkerOptions.SectionName}:{key}")).ValidateOnStart();
        services.AddOptions<ComputeOptions>().Bind(configuration.GetSection(ComputeOptions.SectionName))
            .ValidateProblems(o => o.Problems(key => $"{ComputeOptions.SectionName}:{key}")).ValidateOnStart();
        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<EraserMetrics>();
        services.AddSingleton<WarmEngines>();
        services.AddSingleton<WarmModels>();
        services.AddSingleton<ReplacementSetLoader>();
        services.AddSingleton<TextReplacementSets>();
        services.AddSingleton<RequestChecks>();
        services.AddSingleton<UpdateSolver>();
        services.AddSingleton<Redeliveries>();
        services.AddSingleton<UnlearningBatchService>();
        return services;
    }

    /// <summary>Options validation by a rule set that lists every problem as a sentence (shared with the CLI).</summary>
    public static OptionsBuilder<T> ValidateProblems<T>(this OptionsBuilder<T> builder, Func<T, IReadOnlyList<string>> problems) where T : class
    {
        builder.Services.AddSingleton<IValidateOptions<T>>(new ProblemsValidator<T>(builder.Name, problems));
        return builder;
    }

    private sealed class ProblemsValidator<T>(string? name, Func<T, IReadOnlyList<string>> problems) : IValidateOptions<T> where T : class
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
