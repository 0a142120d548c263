using EraserWorker.Cli;

return await EraserCommandLine.Build().Parse(args).InvokeAsync();
