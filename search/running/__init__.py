"""Running a study: settings, the space, the study, sampler and pruners, the trial loop, workers."""
