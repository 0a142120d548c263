using System.Globalization;

namespace EraserWorker.Core.Influence.Iterated;

/// <summary>Which update a version gets (docs/spec.md §1.6).</summary>
public enum UpdateMethod
{
    /// <summary>SPEC §1.2: one Gauss–Newton step from θ₀ on the cached rows.</summary>
    OneStep,
    /// <summary>Gauss–Newton with a Levenberg–Marquardt trust region on the hybrid edited objective, until it converges.</summary>
    Iterated,
}

/// <summary>Settings of the iterated update. Part of a version's settings: changing any changes the version.</summary>
public sealed record IteratedOptions
{
    public UpdateMethod Method { get; init; } = UpdateMethod.Iterated;

    /// <summary>Accepted Gauss–Newton steps at most.</summary>
    public int MaxIterations { get; init; } = 8;

    /// <summary>Stop when an accepted step decreased F by at most this fraction of the total decrease so far.</summary>
    public double DecreaseTolerance { get; init; } = 1e-3;

    /// <summary>Stop when ‖∇F(θ_k)‖ ≤ this × ‖∇F(θ₀)‖ (= ‖b‖): the first step already solved a quadratic objective.</summary>
    public double GradientTolerance { get; init; } = 1e-5;

    /// <summary>The Levenberg–Marquardt damping μ after the first rejected step, relative to the mean eigenvalue of the
    /// edited data term (Σᵢ‖cᵢ‖²/P). The first step always tries μ = 0, so it is SPEC §1.2's update.</summary>
    public double InitialTrustDamping { get; init; } = 1e-2;

    /// <summary>Rejected trial steps in a row before the iteration stops with <c>no-decrease</c>.</summary>
    public int MaxRejections { get; init; } = 12;

    /// <summary>Every out-of-range setting as one sentence naming it as the caller does (see
    /// <see cref="SolverOptions.Problems"/>); empty when usable.</summary>
    public IReadOnlyList<string> Problems(Func<string, string> nameOf)
    {
        var problems = new List<string>();
        void Require(bool ok, string setting, string rule, object value)
        {
            if (!ok)
                problems.Add($"{nameOf(setting)} must be {rule} (got {Convert.ToString(value, CultureInfo.InvariantCulture)}).");
        }
        Require(Enum.IsDefined(Method), nameof(Method), "oneStep or iterated", Method);
        Require(MaxIterations >= 1 && MaxIterations <= 1000, nameof(MaxIterations), "in [1, 1000]", MaxIterations);
        Require(DecreaseTolerance > 0 && DecreaseTolerance < 1, nameof(DecreaseTolerance), "in (0, 1)", DecreaseTolerance);
        Require(GradientTolerance > 0 && GradientTolerance < 1, nameof(GradientTolerance), "in (0, 1)", GradientTolerance);
        Require(double.IsFinite(InitialTrustDamping) && InitialTrustDamping > 0, nameof(InitialTrustDamping),
            "a finite number > 0", InitialTrustDamping);
        Require(MaxRejections >= 1 && MaxRejections <= 100, nameof(MaxRejections), "in [1, 100]", MaxRejections);
        return problems;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem, named as the properties are.</summary>
    public void Validate()
    {
        if (Problems(name => name) is { Count: > 0 } problems)
            throw new ArgumentException("Invalid iterated-update options: " + string.Join(" ", problems));
    }

    public static UpdateMethod ParseMethod(string value) => value.Trim().ToLowerInvariant() switch
    {
        "onestep" or "one-step" => UpdateMethod.OneStep,
        "iterated" => UpdateMethod.Iterated,
        _ => throw new ArgumentException($"Unknown update '{value}': expected oneStep or iterated."),
    };

    public static string Name(UpdateMethod method) => method == UpdateMethod.OneStep ? "one-step" : "iterated";
}
